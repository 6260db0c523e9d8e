//! Printing results and errors: text for people, `--json` for scripts. Errors are one line
//! on stderr and a non-zero exit, never a backtrace.

use std::process::ExitCode;

use p2pnode_node::NodeError;
use p2pnode_node::control::ControlError;
use serde::Serialize;

/// Prints `value` as JSON, or runs `text` to print it for people.
pub(crate) fn show<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T)) {
    if json {
        match serde_json::to_string(value) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot encode output: {e}"),
        }
    } else {
        text(value);
    }
}

/// An outcome the command has already printed in full (as JSON too): only the exit
/// status, and for people one line on stderr, remain to say.
#[derive(Debug)]
pub(crate) struct AlreadyShown(pub(crate) String);

impl std::fmt::Display for AlreadyShown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AlreadyShown {}

/// Reports an error and returns the exit code for it.
pub(crate) fn fail_error(json: bool, e: &anyhow::Error) -> ExitCode {
    if let Some(shown) = e.downcast_ref::<AlreadyShown>() {
        if !json {
            eprintln!("error: {shown}");
        }
        return ExitCode::FAILURE;
    }
    let kind = if let Some(c) = e.downcast_ref::<ControlError>() {
        c.kind().to_string()
    } else if let Some(n) = e.downcast_ref::<NodeError>() {
        n.kind().to_string()
    } else {
        "error".to_string()
    };
    fail(json, &kind, &one_line(e))
}

pub(crate) fn fail(json: bool, kind: &str, message: &str) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::json!({ "error": { "kind": kind, "message": message } })
        );
    }
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

/// The error and its causes on one line. Our library errors already name their cause in
/// their message, so a cause whose text is already there is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}
