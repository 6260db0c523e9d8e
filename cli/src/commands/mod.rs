//! One module per subcommand.

mod chat;
mod connect;
mod contacts;
mod db;
mod doctor;
mod files;
mod find;
mod id;
mod net;
mod peers;
mod ping;
mod shell;
mod start;
mod status;
mod stop;
mod trust;
mod verify;
mod vpn;

use anyhow::Result;
use p2pnode_node::control::ControlClient;

use crate::args::{Cli, Command};
use crate::settings;
pub(crate) use contacts::{Book, resolve_peer};

pub(crate) async fn run(cli: Cli) -> Result<()> {
    // These need no data directory (a packager runs them on a build machine).
    match cli.command {
        Command::Completions { shell } => return shell::completions(shell),
        Command::Man => return shell::man(),
        _ => {}
    }
    let data_dir = settings::data_dir(cli.data_dir.as_deref())?;
    let json = cli.json;
    let control = ControlClient::new(&data_dir);
    match cli.command {
        Command::Start(args) => start::run(&data_dir, &args, json).await,
        Command::Id => id::run(&data_dir, json),
        Command::Status => status::run(&control, json).await,
        Command::Doctor => doctor::run(&data_dir, &control, json).await,
        Command::Peers => peers::run(&control, json).await,
        Command::Connect { target } => connect::run(&control, &target, json).await,
        Command::Find { peer_id } => find::run(&control, &peer_id, json).await,
        Command::Ping { peer_id, count } => ping::run(&control, &peer_id, count, json).await,
        Command::Stop => stop::run(&control, json).await,
        Command::Verify { peer_id, confirm } => {
            verify::run(&control, &peer_id, confirm, json).await
        }
        Command::Trust(cmd) => trust::run(&control, cmd, json).await,
        Command::Contacts(cmd) => contacts::run(&control, cmd, json).await,
        Command::Chat(args) => chat::run(&control, args, json).await,
        Command::Room(cmd) => chat::room_command(&control, cmd, json).await,
        Command::Net(cmd) => net::run(&control, cmd, json).await,
        Command::Db(cmd) => db::run(&control, cmd, json).await,
        Command::Vpn(cmd) => vpn::run(&control, cmd, json).await,
        Command::Completions { .. } | Command::Man => Ok(()),
        Command::Share(args) => files::share(&control, args, json).await,
        Command::Unshare { content_id } => files::unshare(&control, content_id, json).await,
        Command::Shares => files::shares(&control, json).await,
        Command::Get(args) => files::get(&control, args, json).await,
        Command::Send(args) => files::send(&control, args, json).await,
        Command::Inbox => files::inbox(&control, json).await,
        Command::Accept(args) => files::accept(&control, args, json).await,
        Command::Reject { offer } => files::reject(&control, offer, json).await,
        Command::Transfers => files::transfers(&control, json).await,
    }
}
