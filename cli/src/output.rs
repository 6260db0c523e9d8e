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

/// Reports an error and returns the exit code for it.
pub(crate) fn fail_error(json: bool, e: &anyhow::Error) -> ExitCode {
    let kind = if let Some(c) = e.downcast_ref::<ControlError>() {
        c.kind().to_string()
    } else if let Some(n) = e.downcast_ref::<NodeError>() {
        n.kind().to_string()
    } else {
        "error".to_string()
    };
    // `{:#}` prints the context chain on one line: "cannot x: because y".
    fail(json, &kind, &format!("{e:#}"))
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
