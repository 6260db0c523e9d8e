//! Running the tools the lab is built with (`ip`, `nft`, `tc`, `sysctl`), in the root
//! namespace or inside a lab namespace through `ip netns exec`.

use std::process::{Output, Stdio};

use tokio::io::AsyncWriteExt;

use super::LabError;

/// Longest piece of stderr kept in an error, so one failing command cannot flood a log.
const STDERR_KEEP: usize = 2000;

pub(crate) fn describe<S: AsRef<str>>(program: &str, args: &[S]) -> String {
    let mut line = program.to_string();
    for arg in args {
        line.push(' ');
        line.push_str(arg.as_ref());
    }
    line
}

/// The arguments of `ip` that run `program args` inside namespace `ns`.
pub(crate) fn netns_exec_args<S: AsRef<str>>(ns: &str, program: &str, args: &[S]) -> Vec<String> {
    let mut all = vec![
        "netns".to_string(),
        "exec".to_string(),
        ns.to_string(),
        program.to_string(),
    ];
    all.extend(args.iter().map(|a| a.as_ref().to_string()));
    all
}

pub(crate) fn tail(text: &str, keep: usize) -> String {
    let text = text.trim();
    if text.len() <= keep {
        return text.to_string();
    }
    let mut start = text.len() - keep;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

fn check(command: String, output: Output) -> Result<String, LabError> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command,
            status: output.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&output.stderr), STDERR_KEEP),
        })
    }
}

/// Runs a command to completion and returns its stdout; a non-zero exit is an error.
pub(crate) async fn run<S: AsRef<str>>(program: &str, args: &[S]) -> Result<String, LabError> {
    let command = describe(program, args);
    tracing::trace!(%command, "run");
    let output = tokio::process::Command::new(program)
        .args(args.iter().map(AsRef::as_ref))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    check(command, output)
}

/// Like [`run`], with `input` written to the command's stdin (`nft -f -`).
pub(crate) async fn run_with_stdin<S: AsRef<str>>(
    program: &str,
    args: &[S],
    input: &str,
) -> Result<String, LabError> {
    let command = describe(program, args);
    tracing::trace!(%command, "run with stdin");
    let spawn_err = |source| LabError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = tokio::process::Command::new(program)
        .args(args.iter().map(AsRef::as_ref))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await.map_err(spawn_err)?;
        // Dropping stdin closes it, so the command sees the end of its input.
    }
    let output = child.wait_with_output().await.map_err(spawn_err)?;
    check(command, output)
}

/// Blocking variant for tear-down in `Drop`, where no runtime may be available.
pub(crate) fn run_blocking<S: AsRef<str>>(program: &str, args: &[S]) -> Result<String, LabError> {
    let command = describe(program, args);
    let output = std::process::Command::new(program)
        .args(args.iter().map(AsRef::as_ref))
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    check(command, output)
}
