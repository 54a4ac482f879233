//! Why a container's init failed. libcontainer 0.7 sends its init process's
//! error to the caller as a bare top-level message ("failed to prepare
//! rootfs", "failed syscall"); the cause exists only in the ERROR event the
//! init process logs first, with the error in its Debug form. [`layer`],
//! installed by each binary beside its log, writes that event's text to a
//! pipe that [`Capture`] holds open around create and exec, and the engine
//! adds it to the error it returns.

use std::cell::Cell;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{Filtered, Targets};
use tracing_subscriber::layer::{Context, Layer};

/// Where libcontainer's init process logs: code that runs only in the
/// container's init, after the fork.
const INIT_TARGET: &str = "libcontainer::process::init";

thread_local! {
    /// The write end of the capturing pipe, or -1. Thread-local: the init
    /// process is a clone of the thread that creates it, so each create
    /// sees only its own pipe, whatever other threads do.
    static PIPE: Cell<RawFd> = const { Cell::new(-1) };
}

/// The layer that captures the cause. Callers add it to their subscriber
/// next to their own log, whose filter may well silence libcontainer.
pub fn layer<S>() -> Filtered<CauseLayer, Targets, S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    CauseLayer.with_filter(Targets::new().with_target(INIT_TARGET, Level::ERROR))
}

/// See [`layer`].
pub struct CauseLayer;

impl<S: Subscriber> Layer<S> for CauseLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let fd = PIPE.with(Cell::get);
        if fd < 0 {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = format!("{}\n", fields.render());
        // A raw write, no lock: this runs in a clone of a possibly
        // multi-threaded process, where a lock another thread held stays
        // held.
        // SAFETY: fd is the open write end set by Capture; the buffer is
        // valid for its length.
        let _ = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
    }
}

/// Captures the cause of a failure of the init processes that the calling
/// thread creates while the value lives.
pub struct Capture {
    read: OwnedFd,
    /// Kept open while init processes may write; read without waiting.
    _write: OwnedFd,
}

impl Capture {
    pub fn start() -> std::io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        nix::fcntl::fcntl(
            read.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        PIPE.with(|p| p.set(write.as_raw_fd()));
        Ok(Capture {
            read,
            _write: write,
        })
    }

    /// The first cause an init process reported, if any: it logs the cause
    /// before it tells the caller it failed, so it is in the pipe by now.
    pub fn cause(self) -> Option<String> {
        PIPE.with(|p| p.set(-1));
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = nix::unistd::read(self.read.as_raw_fd(), &mut buf) {
            text.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&text)
            .lines()
            .next()
            .map(str::to_owned)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        PIPE.with(|p| p.set(-1));
    }
}

/// Adds the cause to `message` unless the message already says it; a
/// cause whose step is the message's last words adds only what follows.
pub fn with_cause(message: String, cause: Option<String>) -> String {
    let Some(cause) = cause.filter(|cause| !message.contains(cause.as_str())) else {
        return message;
    };
    match cause.split_once(": ") {
        Some((step, rest)) if message.ends_with(step) => format!("{message}: {rest}"),
        _ => format!("{message}: {cause}"),
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    err: Option<String>,
    others: Vec<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "message" => self.message = text,
            "err" | "e" | "error" => self.err = Some(readable(&text)),
            name => self.others.push(format!("{name}={text}")),
        }
    }
}

impl Fields {
    /// "step: cause (field=value, ...)".
    fn render(&self) -> String {
        let mut line = self.message.clone();
        if let Some(err) = &self.err {
            line.push_str(": ");
            line.push_str(err);
        }
        if !self.others.is_empty() {
            line.push_str(&format!(" ({})", self.others.join(", ")));
        }
        line
    }
}

/// The words inside an error's Debug form: libcontainer's errors are enums
/// wrapping a message (`Mount(Other("filesystem proc must be ..."))`) or an
/// errno (`Nix(EPERM)`) or an io::Error (`IO(Os { code: 1, .. })`). The
/// message where there is one, else the innermost value; "(os error N)"
/// becomes the errno's name.
fn readable(debug: &str) -> String {
    if let Some(code) = os_code(debug) {
        let errno = nix::errno::Errno::from_raw(code);
        return format!("{} ({errno:?})", errno.desc());
    }
    let inner = match quoted(debug) {
        Some(message) => message,
        None => {
            let start = debug.rfind('(').map_or(0, |i| i + 1);
            let end = debug[start..].find(')').map_or(debug.len(), |i| start + i);
            debug[start..end].to_owned()
        }
    };
    name_os_errors(&inner)
}

/// The errno of an io::Error's Debug form.
fn os_code(debug: &str) -> Option<i32> {
    let rest = &debug[debug.find("Os { code: ")? + "Os { code: ".len()..];
    rest[..rest.find(',')?].parse().ok()
}

/// The first string literal in `debug`, unescaped.
fn quoted(debug: &str) -> Option<String> {
    let start = debug.find('"')?;
    let mut out = String::new();
    let mut chars = debug[start + 1..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

fn name_os_errors(text: &str) -> String {
    let Some(at) = text.find("(os error ") else {
        return text.to_owned();
    };
    let rest = &text[at + "(os error ".len()..];
    let Some(close) = rest.find(')') else {
        return text.to_owned();
    };
    match rest[..close].parse::<i32>() {
        Ok(n) => format!(
            "{}({:?}){}",
            &text[..at],
            nix::errno::Errno::from_raw(n),
            &rest[close + 1..]
        ),
        Err(_) => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    fn test_subscriber() -> impl Subscriber {
        tracing_subscriber::registry().with(layer())
    }

    #[test]
    fn a_wrapped_message_is_read_out_of_its_debug_form() {
        assert_eq!(
            readable(r#"Mount(Other("filesystem proc must be mounted on ordinary directory"))"#),
            "filesystem proc must be mounted on ordinary directory"
        );
        assert_eq!(
            readable(
                r#"SetCaps(CapsError("capset failure: Operation not permitted (os error 1)"))"#
            ),
            "capset failure: Operation not permitted (EPERM)"
        );
        assert_eq!(readable("Nix(EPERM)"), "EPERM");
        assert_eq!(
            readable(&format!("IO({:?})", std::io::Error::from_raw_os_error(13))),
            "Permission denied (EACCES)"
        );
    }

    #[test]
    fn the_init_processs_first_error_is_the_cause() {
        tracing::subscriber::with_default(test_subscriber(), || {
            let capture = Capture::start().unwrap();
            tracing::error!(target: "libcontainer::process::init::process", err = ?std::io::Error::from_raw_os_error(1), "failed to drop capabilities");
            tracing::error!(target: "libcontainer::process::init::process", "a later line");
            tracing::error!(target: "libcontainer::container::builder_impl", "the caller's own line");
            let cause = capture.cause().unwrap();
            assert!(
                cause.starts_with("failed to drop capabilities: "),
                "{cause}"
            );
            assert!(cause.contains("EPERM"), "{cause}");
            assert!(Capture::start().unwrap().cause().is_none());
        });
    }

    #[test]
    fn a_cause_already_said_is_not_repeated() {
        let said = "failed to prepare rootfs: x".to_owned();
        assert_eq!(with_cause(said.clone(), Some("x".into())), said);
        assert_eq!(with_cause("a".into(), Some("b".into())), "a: b");
        assert_eq!(
            with_cause(
                "x: failed to prepare rootfs".into(),
                Some("failed to prepare rootfs: why".into())
            ),
            "x: failed to prepare rootfs: why"
        );
    }
}
