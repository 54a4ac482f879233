//! The OCI command line: runc's commands, served in namespace mode by the
//! engine on the host, or in VM mode.
//!
//! - [`cli`]: the flags;
//! - [`container`]: a container, whichever isolation runs it;
//! - [`namespace`]: namespace mode;
//! - [`vm`]: VM mode;
//! - [`foreground`]: waiting for a process and forwarding signals;
//! - [`console`]: the terminal of `run` and `exec` without a console
//!   socket;
//! - [`templates`]: `spec` and `features`.

pub mod cli;
pub mod console;
pub mod container;
pub mod foreground;
pub mod namespace;
pub mod templates;
pub mod vm;

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Result};
use kata_rs_engine::Engine;
use nix::sys::signal::Signal;
use oci_spec::runtime::{LinuxCpu, LinuxResources};

use crate::config::{Config, Isolation};
use cli::{Cli, Command, CreateArgs, ListFormat};

/// Runs one OCI command; returns the process's exit code.
pub fn dispatch(cli: Cli, config: &Config) -> Result<i32> {
    let g = &cli.global;
    let root = g.root.as_path();
    // The driver matters where a container's cgroup is made; the engine
    // of an existing container follows the one it was made with.
    let systemd = || crate::cgroup_driver::systemd(g.systemd_cgroup, config);
    let creating_engine = || -> Result<Engine> { Ok(Engine::new(root, systemd()?)?) };
    match cli.command {
        Command::Check { .. } => unreachable!("handled by main"),
        Command::VmMonitor {
            exec_id,
            tty,
            console_socket,
            control_fd,
            id,
        } => return vm::monitor_main(root, &id, exec_id, tty, console_socket, control_fd),
        Command::Create(args) => {
            let isolation = isolation(&args, config)?;
            if isolation == Isolation::Namespace {
                kata_rs_engine::sealed::run_sealed()?;
            }
            let terminal = console::bundle_terminal(&args);
            console::needed(terminal, args.console_socket.as_deref(), false)?;
            match isolation {
                Isolation::Namespace => drop(namespace::create(&creating_engine()?, &args)?),
                Isolation::Vm => {
                    // The engine makes the state root, which VM containers
                    // share with namespace ones.
                    creating_engine()?;
                    vm::create(root, config, &args, systemd()?)?
                }
            }
        }
        Command::Run {
            mut create, detach, ..
        } => {
            let isolation = isolation(&create, config)?;
            if isolation == Isolation::Namespace {
                kata_rs_engine::sealed::run_sealed()?;
            }
            let console = console::for_bundle(&mut create, !detach)?;
            return match isolation {
                Isolation::Namespace => {
                    namespace::run(&creating_engine()?, &create, detach, console)
                }
                Isolation::Vm => {
                    creating_engine()?;
                    vm::run(root, config, &create, systemd()?, detach, console)
                }
            };
        }
        Command::Start { id } => container::load(root, &id)?.start()?,
        Command::State { id } => {
            let state = container::load(root, &id)?.state()?;
            println!("{}", serde_json::to_string_pretty(&state)?);
        }
        Command::Kill { all, id, signal } => {
            let signal = parse_signal(&signal)?;
            container::load(root, &id)?.kill(signal, all)?;
        }
        Command::Delete { force, id } => delete(root, &id, force)?,
        Command::Exec(args) => return container::load(root, &args.id)?.exec(root, &args),
        Command::Ps {
            format,
            id,
            ps_args,
        } => {
            let container = container::load(root, &id)?;
            let pids = container.pids()?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string(&pids)?),
                ListFormat::Table => print!("{}", container.ps_table(&pids, &ps_args)?),
            }
        }
        Command::List { format, quiet } => list(root, format, quiet)?,
        Command::Spec { bundle } => {
            templates::write_spec(&bundle, g.rootless.as_deref() == Some("true"))?
        }
        Command::Features => println!("{}", templates::features()),
        Command::Pause { id } => container::load(root, &id)?.pause()?,
        Command::Resume { id } => container::load(root, &id)?.resume()?,
        Command::Update {
            resources,
            memory,
            pids_limit,
            cpu_quota,
            cpu_period,
            cpu_shares,
            id,
        } => {
            let mut update = match &resources {
                Some(path) => namespace::read_resources(path)?,
                None => LinuxResources::default(),
            };
            if let Some(m) = memory {
                let memory = update.memory_mut().get_or_insert_with(Default::default);
                memory.set_limit(Some(m));
            }
            if let Some(p) = pids_limit {
                update
                    .pids_mut()
                    .get_or_insert_with(Default::default)
                    .set_limit(p);
            }
            if cpu_quota.is_some() || cpu_period.is_some() || cpu_shares.is_some() {
                let cpu = update.cpu_mut().get_or_insert_with(LinuxCpu::default);
                if let Some(q) = cpu_quota {
                    cpu.set_quota(Some(q));
                }
                if let Some(p) = cpu_period {
                    cpu.set_period(Some(p));
                }
                if let Some(s) = cpu_shares {
                    cpu.set_shares(Some(s));
                }
            }
            container::load(root, &id)?.update(&update)?;
        }
        Command::Events {
            stats,
            interval,
            id,
        } => events(root, &id, stats, interval)?,
    }
    Ok(0)
}

/// The isolation a new container gets: `--isolation`, else its
/// annotation, else the configuration.
pub fn isolation(args: &CreateArgs, config: &Config) -> Result<Isolation> {
    if let Some(i) = args.isolation {
        return Ok(i);
    }
    // A bundle without a readable spec is refused by the create itself.
    let annotated = match crate::bundle::read_spec(&args.bundle) {
        Ok(spec) => Isolation::annotated(&spec)?,
        Err(_) => None,
    };
    Ok(annotated.unwrap_or(config.runtime.isolation))
}

/// Signals by name (TERM, SIGTERM, any case) or number, as runc takes them.
pub fn parse_signal(signal: &str) -> Result<Signal> {
    let unknown = || anyhow::anyhow!("unknown signal {signal:?}");
    if let Ok(n) = signal.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| unknown());
    }
    let upper = signal.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().map_err(|_| unknown())
}

fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    match container::load(root, id) {
        Ok(container) => container.delete(force),
        // runc: deleting what is not there is fine with --force.
        Err(e)
            if force
                && matches!(
                    e.downcast_ref::<kata_rs_engine::EngineError>(),
                    Some(kata_rs_engine::EngineError::NotFound { .. })
                ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn list(root: &Path, format: ListFormat, quiet: bool) -> Result<()> {
    let mut states = Vec::new();
    for id in container::ids(root)? {
        // A container deleted meanwhile is simply not listed.
        if let Ok(state) = container::load(root, &id).and_then(|c| c.state()) {
            states.push(state);
        }
    }
    let mut out = std::io::stdout().lock();
    if quiet {
        for s in &states {
            writeln!(out, "{}", s.id)?;
        }
        return Ok(());
    }
    match format {
        ListFormat::Json => writeln!(out, "{}", serde_json::to_string(&states)?)?,
        ListFormat::Table => {
            writeln!(out, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER")?;
            for s in &states {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    s.id,
                    s.pid,
                    s.status,
                    s.bundle.display(),
                    s.created,
                    s.owner
                )?;
            }
        }
    }
    Ok(())
}

fn events(root: &Path, id: &str, once: bool, interval: u64) -> Result<()> {
    // OOM kills counted since the first statistics: each new one is an
    // "oom" event, as runc prints them (for the kills after it started).
    let mut oom_kills: Option<u64> = None;
    loop {
        let container = container::load(root, id)?;
        let (running, data) = (!container.status().is_stopped(), container.stats());
        drop(container);
        // A container the OOM killer just ended still has its cgroup to
        // read its last kills from.
        let kills = data
            .as_ref()
            .ok()
            .and_then(|d| d["memory"]["raw"]["oom_kill"].as_u64());
        if let (Some(before), Some(now)) = (oom_kills, kills) {
            for _ in before..now {
                println!("{}", serde_json::json!({"type": "oom", "id": id}));
            }
        }
        oom_kills = kills.or(oom_kills);
        if !running {
            bail!("container {id} is not running");
        }
        let event = serde_json::json!({"type": "stats", "id": id, "data": data?});
        println!("{event}");
        if once {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(interval.max(1)));
    }
}
