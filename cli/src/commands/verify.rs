//! `p2pnode verify <peer-id | name>`: show the short authentication string, ask whether
//! the peer sees the same, and pin the peer's key when it does.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};
use p2pnode_node::api::{PeerRequest, TrustInfo, VerifyInfo};
use p2pnode_node::control::ControlClient;

use crate::output;

pub(crate) async fn run(
    control: &ControlClient,
    peer_id: &str,
    confirm: bool,
    json: bool,
) -> Result<()> {
    let resolved = super::resolve_peer(control, peer_id).await?;
    // Name the peer id itself beside any contact name: the code is that key's alone.
    let who = super::Book::load(control).await.label(&resolved);
    let req = PeerRequest { peer_id: resolved };
    let info: VerifyInfo = control.post("verify", &req).await?;
    if json && !confirm {
        // Scripts get the code and compare it themselves.
        output::show(true, &info, |_| {});
        return Ok(());
    }
    if !json {
        println!("Verification code with {who}:");
        println!();
        println!("    {}", info.sas_words);
        println!("    {}", info.sas_digits);
        println!();
    }
    let matched = if confirm {
        true
    } else {
        if !std::io::stdin().is_terminal() && !json {
            println!("(reading the answer from standard input)");
        }
        print!("Does {who} see exactly the same code? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        matches!(answer.trim().to_lowercase().as_str(), "y" | "yes")
    };
    if !matched {
        bail!(
            "codes not confirmed; {who} is NOT verified (if the codes differ, someone may be intercepting)"
        );
    }
    let t: TrustInfo = control.post("verify/confirm", &req).await?;
    output::show(json, &t, |_| println!("{who} is now verified"));
    Ok(())
}
