//! The OCI command line: runc's commands, served in namespace mode by the
//! engine on the host, or in VM mode.
//!
//! - [`cli`]: the flags;
//! - [`log`]: text or JSON-lines logging for containerd and conmon;
//! - [`namespace`]: namespace mode;
//! - [`foreground`]: waiting for a process and forwarding signals;
//! - [`templates`]: `spec` and `features`.

pub mod cli;
pub mod foreground;
pub mod log;
pub mod namespace;
pub mod templates;

use std::io::Write;

use anyhow::{bail, Context, Result};
use kata_rs_engine::{Engine, Signal};

use crate::config::{Config, Isolation};
use cli::{Cli, Command, CreateArgs, ListFormat};

/// The annotation that chooses a container's isolation.
pub const ISOLATION_ANNOTATION: &str = "io.kata-rs.isolation";

/// Runs one OCI command; returns the process's exit code.
pub fn dispatch(cli: Cli, config: &Config) -> Result<i32> {
    let g = &cli.global;
    let engine = || Engine::new(&g.root, g.systemd_cgroup).map_err(anyhow::Error::from);
    match cli.command {
        Command::Check { .. } => unreachable!("handled by main"),
        Command::Create(args) => {
            require_namespace(&args, config)?;
            namespace::create(&engine()?, &args)?;
        }
        Command::Run { create, detach, .. } => {
            require_namespace(&create, config)?;
            return namespace::run(&engine()?, &create, detach);
        }
        Command::Start { id } => engine()?.load(&id)?.start()?,
        Command::State { id } => {
            let state = engine()?.load(&id)?.state()?;
            println!("{}", serde_json::to_string_pretty(&state)?);
        }
        Command::Kill { all, id, signal } => {
            let signal = parse_signal(&signal)?;
            engine()?.load(&id)?.kill(signal, all)?;
        }
        Command::Delete { force, id } => delete(&engine()?, &id, force)?,
        Command::Exec(args) => return namespace::exec(&engine()?, &args),
        Command::Ps {
            format,
            id,
            ps_args,
        } => {
            let pids = engine()?.load(&id)?.pids()?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string(&pids)?),
                ListFormat::Table => print!("{}", namespace::ps_table(&pids, &ps_args)?),
            }
        }
        Command::List { format, quiet } => list(&engine()?, format, quiet)?,
        Command::Spec { bundle } => {
            templates::write_spec(&bundle, g.rootless.as_deref() == Some("true"))?
        }
        Command::Features => println!("{}", templates::features()),
        Command::Pause { id } => engine()?.load(&id)?.pause()?,
        Command::Resume { id } => engine()?.load(&id)?.resume()?,
        Command::Update {
            resources,
            memory,
            pids_limit,
            cpu_quota,
            cpu_period,
            cpu_shares,
            id,
        } => {
            let mut value = match &resources {
                Some(path) => namespace::read_resources(path)?,
                None => serde_json::json!({}),
            };
            let set =
                |v: &mut serde_json::Value, section: &str, key: &str, x: serde_json::Value| {
                    v[section][key] = x;
                };
            if let Some(m) = memory {
                set(&mut value, "memory", "limit", m.into());
            }
            if let Some(p) = pids_limit {
                set(&mut value, "pids", "limit", p.into());
            }
            if let Some(q) = cpu_quota {
                set(&mut value, "cpu", "quota", q.into());
            }
            if let Some(p) = cpu_period {
                set(&mut value, "cpu", "period", p.into());
            }
            if let Some(s) = cpu_shares {
                set(&mut value, "cpu", "shares", s.into());
            }
            let resources: kata_rs_engine::LinuxResources =
                serde_json::from_value(value).context("invalid resources")?;
            engine()?.load(&id)?.update(&resources)?;
        }
        Command::Events {
            stats,
            interval,
            id,
        } => events(&engine()?, &id, stats, interval)?,
    }
    Ok(0)
}

/// The isolation a new container gets: `--isolation`, else its
/// annotation, else the configuration.
pub fn isolation(args: &CreateArgs, config: &Config) -> Result<Isolation> {
    if let Some(i) = args.isolation {
        return Ok(i);
    }
    let path = args.bundle.join("config.json");
    let annotated = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v["annotations"][ISOLATION_ANNOTATION]
                .as_str()
                .map(str::to_owned)
        });
    match annotated {
        Some(value) => value
            .parse()
            .map_err(|e: String| anyhow::anyhow!("annotation {ISOLATION_ANNOTATION}: {e}")),
        None => Ok(config.runtime.isolation),
    }
}

fn require_namespace(args: &CreateArgs, config: &Config) -> Result<()> {
    match isolation(args, config)? {
        Isolation::Namespace => Ok(()),
        Isolation::Vm => bail!(
            "container {}: VM isolation is not available from the OCI command line yet; \
             use --isolation=namespace (kata-rs check --boot runs a microVM)",
            args.id
        ),
    }
}

/// Signals by name (TERM, SIGTERM) or number, as runc takes them.
pub fn parse_signal(signal: &str) -> Result<Signal> {
    Signal::try_from(signal).map_err(|_| anyhow::anyhow!("unknown signal {signal:?}"))
}

fn delete(engine: &Engine, id: &str, force: bool) -> Result<()> {
    match engine.load(id) {
        Ok(container) => Ok(container.delete(force)?),
        // runc: deleting what is not there is fine with --force.
        Err(kata_rs_engine::EngineError::NotFound { .. }) if force => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn list(engine: &Engine, format: ListFormat, quiet: bool) -> Result<()> {
    let mut states = Vec::new();
    for id in engine.ids()? {
        // A container deleted meanwhile is simply not listed.
        if let Ok(state) = engine.load(&id).and_then(|c| c.state()) {
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

fn events(engine: &Engine, id: &str, once: bool, interval: u64) -> Result<()> {
    loop {
        let container = engine.load(id)?;
        if container.status() == "stopped" {
            bail!("container {id} is not running");
        }
        let event = serde_json::json!({"type": "stats", "id": id, "data": container.stats()?});
        drop(container);
        println!("{event}");
        if once {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(interval.max(1)));
    }
}
