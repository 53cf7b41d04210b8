//! How the command line writes: every line through `out!` (stdout) or
//! `note!` (stderr), so that
//!
//! - text from the server or the database never reaches a terminal raw: control,
//!   format and bidi characters are escaped in the whole line ([`text::escape`]
//!   keeps only the line breaks patd itself writes; fields that may hold a line
//!   break of their own go through [`shown`] first);
//! - a closed stdout (`patd list | head -1`) ends the process quietly, with the
//!   status a shell reports for coreutils in that case (141: SIGPIPE), instead of
//!   a panic.

use std::borrow::Cow;
use std::io::Write;

use patd::domain::text;

/// Exit status of a process whose output pipe closed (128 + SIGPIPE).
pub const CLOSED_PIPE: i32 = 141;

/// A field of the server's or the database's, for a line of output: every
/// forbidden character escaped, line breaks included.
pub fn shown(value: &str) -> Cow<'_, str> {
    text::escape(value, false)
}

/// Writes `line` and a newline to stdout (see the module comment).
pub fn out_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(text::escape(line, true).as_bytes())
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    if let Err(err) = written {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(CLOSED_PIPE);
        }
        note_line(&format!("patd: cannot write to stdout: {err}"));
        std::process::exit(1);
    }
}

/// Writes `line` and a newline to stderr; a closed stderr is ignored.
pub fn note_line(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_all(text::escape(line, true).as_bytes())
        .and_then(|()| stderr.write_all(b"\n"));
}

/// `println!`, through [`out_line`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::output::out_line(&format!($($arg)*)) };
}

/// `eprintln!`, through [`note_line`].
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => { $crate::cli::output::note_line(&format!($($arg)*)) };
}
