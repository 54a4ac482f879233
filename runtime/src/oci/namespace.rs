//! Namespace mode: the container runs on the host, made and managed by the
//! engine the way runc does it. The pid in --pid-file is the container's
//! init.

use std::path::Path;

use anyhow::{Context, Result};
use kata_rs_engine::{Container, CreateOptions, Engine, ExecOptions, LinuxResources, Process};

use super::cli::{CreateArgs, ExecArgs};
use super::console::{self, OwnConsole};
use super::foreground;

pub fn create(engine: &Engine, args: &CreateArgs) -> Result<Container> {
    let opts = CreateOptions {
        bundle: args.bundle.clone(),
        pid_file: args.pid_file.clone(),
        console_socket: args.console_socket.clone(),
        preserve_fds: args.preserve_fds,
        no_pivot: args.no_pivot,
        stdio: None,
    };
    Ok(engine.create(&args.id, opts)?)
}

/// `run`: create, start, and unless detached wait for the container and
/// delete it, returning its exit code.
pub fn run(
    engine: &Engine,
    args: &CreateArgs,
    detach: bool,
    console: Option<OwnConsole>,
) -> Result<i32> {
    let mut container = create(engine, args)?;
    if detach {
        container.start()?;
        return Ok(0);
    }
    let terminal = match console::attach(console) {
        Ok(t) => t,
        Err(e) => {
            let _ = container.delete(true);
            return Err(e);
        }
    };
    let signals = foreground::block_signals().context("block signals")?;
    let started = container.start();
    let pid = container.pid();
    drop(container);
    if let Err(e) = started {
        let _ = engine.load(&args.id).and_then(|c| c.delete(true));
        return Err(e.into());
    }
    let pid = pid.context("the container has no init pid")?;
    let code = foreground::wait(pid, &signals, console::resizer(&terminal))
        .context("wait for the container")?;
    if let Err(e) = engine.load(&args.id).and_then(|c| c.delete(true)) {
        tracing::error!(id = %args.id, error = %e, "delete after run");
    }
    Ok(code)
}

/// The process an `exec` runs: `--process FILE` as is, or the container's
/// own process with the command line's changes (as runc builds it).
pub fn exec_process(spec: &kata_rs_engine::Spec, args: &ExecArgs) -> Result<Process> {
    if let Some(path) = &args.process {
        let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        return serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a valid OCI process", path.display()));
    }
    anyhow::ensure!(
        !args.command.is_empty(),
        "exec needs a command or --process FILE"
    );
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args.command.clone()));
    process.set_terminal(Some(args.tty));
    let mut env = process.env().clone().unwrap_or_default();
    for kv in &args.env {
        let key = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    process.set_env(Some(env));
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.clone());
    }
    if let Some(user) = &args.user {
        let (uid, gid) = parse_user(user)?;
        let mut u = process.user().clone();
        u.set_uid(uid);
        u.set_gid(gid);
        process.set_user(u);
    }
    if !args.additional_gids.is_empty() {
        let mut u = process.user().clone();
        u.set_additional_gids(Some(args.additional_gids.clone()));
        process.set_user(u);
    }
    if args.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    if !args.cap.is_empty() {
        add_capabilities(&mut process, &args.cap)?;
    }
    Ok(process)
}

fn parse_user(user: &str) -> Result<(u32, u32)> {
    let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
    let number = |s: &str| {
        s.parse::<u32>()
            .with_context(|| format!("--user {user:?}: {s:?} is not a numeric id"))
    };
    Ok((number(uid)?, number(gid)?))
}

fn add_capabilities(process: &mut Process, caps: &[String]) -> Result<()> {
    use std::str::FromStr;
    let mut set = process.capabilities().clone().unwrap_or_default();
    for name in caps {
        let full = if name.starts_with("CAP_") {
            name.clone()
        } else {
            format!("CAP_{name}")
        };
        let cap = oci_spec::runtime::Capability::from_str(&full)
            .map_err(|_| anyhow::anyhow!("unknown capability {name:?}"))?;
        let add = |get: Option<oci_spec::runtime::Capabilities>| {
            let mut c = get.unwrap_or_default();
            c.insert(cap);
            Some(c)
        };
        let b = add(set.bounding().clone());
        let e = add(set.effective().clone());
        let p = add(set.permitted().clone());
        set.set_bounding(b);
        set.set_effective(e);
        set.set_permitted(p);
    }
    process.set_capabilities(Some(set));
    Ok(())
}

/// `exec`: returns the exit code (0 when detached).
pub fn exec(container: Container, args: &ExecArgs) -> Result<i32> {
    let process = exec_process(&container.spec()?, args)?;
    let terminal = process.terminal().unwrap_or(false);
    let console = console::own_if_needed(terminal, args.console_socket.as_deref(), !args.detach)?;
    let console_socket = console
        .as_ref()
        .map(OwnConsole::path)
        .or_else(|| args.console_socket.clone());
    let opts = ExecOptions {
        process,
        pid_file: args.pid_file.clone(),
        // libcontainer's "detached" only decides its terminal check, which
        // wants a console socket exactly when detached: the process is our
        // child either way, and waited for below unless --detach.
        detached: args.detach || console_socket.is_some(),
        console_socket,
        preserve_fds: args.preserve_fds,
    };
    let pid = container.exec(opts)?;
    drop(container);
    if args.detach {
        return Ok(0);
    }
    let terminal = console::attach(console)?;
    let signals = foreground::block_signals().context("block signals")?;
    foreground::wait(pid, &signals, console::resizer(&terminal)).context("wait for the process")
}

/// `ps`: the table of ps(1) for the container's processes, or their pids.
pub fn ps_table(pids: &[i32], ps_args: &[String]) -> Result<String> {
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .context("run ps")?;
    anyhow::ensure!(
        out.status.success(),
        "ps {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let column = header
        .split_whitespace()
        .position(|h| h == "PID")
        .context("ps printed no PID column")?;
    let mut table = format!("{header}\n");
    for line in lines {
        let pid = line
            .split_whitespace()
            .nth(column)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            table.push_str(line);
            table.push('\n');
        }
    }
    Ok(table)
}

/// Reads `update --resources` from a file or stdin (`-`).
pub fn read_resources(path: &Path) -> Result<LinuxResources> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("read stdin")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?
    };
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid OCI resources", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_numeric_uid_and_gid() {
        assert_eq!(parse_user("1000").unwrap(), (1000, 0));
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        assert!(parse_user("nobody").is_err());
    }

    #[test]
    fn ps_keeps_the_header_and_the_containers_processes() {
        let me = std::process::id() as i32;
        let table = ps_table(&[me], &[]).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("PID"));
        assert_eq!(lines.len(), 2, "{table}");
    }
}
