//! Relaying the agents' handshake: covm carries each message between the
//! two agents and understands none of it.

use super::call::agent_err;
use super::mailbox::AgentMailbox;
use super::session::SessionInfo;
use covm_guest_abi::mailbox::words::{BeginArgs, HandshakeArgs, Role};
use covm_migration::engine::{Link, MigrationError};
use covm_migration::protocol::Message;
use std::time::Instant;

// Any message an agent sends must fit the frame that carries it.
const _: () = assert!(
    covm_agent_protocol::handshake::messages::MAX_HANDSHAKE_MSG_LEN <= covm_migration::protocol::MAX_HANDSHAKE_BYTES
);

/// Splits the agent's handshake output (`u32` length, message, …).
fn messages(output: &[u8]) -> Result<Vec<Vec<u8>>, MigrationError> {
    let mut out = Vec::new();
    let mut rest = output;
    while !rest.is_empty() {
        let bad = || MigrationError::stream("the agent's handshake output is malformed");
        let len = u32::from_le_bytes(rest.get(..4).ok_or_else(bad)?.try_into().expect("4 bytes")) as usize;
        let message = rest.get(4..4 + len).ok_or_else(bad)?;
        out.push(message.to_vec());
        rest = &rest[4 + len..];
    }
    Ok(out)
}

/// Runs the handshake in `role` over `link` until the agent says it is
/// complete; records the attested peer in `info`.
pub fn run(
    mailbox: &mut AgentMailbox,
    role: Role,
    link: &mut dyn Link,
    info: &SessionInfo,
) -> Result<(), MigrationError> {
    let started = Instant::now();
    let result = relay(mailbox, role, link);
    info.add_crypto(started.elapsed());
    match &result {
        Ok(()) => {
            let peer = mailbox.peer().map_err(agent_err)?;
            tracing::info!(
                peer_measurement = %crate::platform::hex(&peer.measurement),
                policy_version = peer.policy_version,
                "confidential migration: peer attested, keys confirmed"
            );
            info.set_peer(peer);
        }
        Err(e) => info.fail(e.to_string()),
    }
    result
}

fn relay(mailbox: &mut AgentMailbox, role: Role, link: &mut dyn Link) -> Result<(), MigrationError> {
    let lanes = mailbox.lanes();
    mailbox.call(BeginArgs { role, lanes }, &[]).map_err(agent_err)?;
    let mut pending = messages(mailbox.output())?;
    loop {
        for message in pending.drain(..) {
            link.send(&Message::Handshake { message })?;
        }
        let message = match link.receive()? {
            Message::Handshake { message } => message,
            Message::Abort { reason } => return Err(MigrationError::PeerAborted { reason }),
            Message::Refuse { reason } => return Err(MigrationError::Refused { reason }),
            other => {
                return Err(MigrationError::Unexpected {
                    got: other.kind(),
                    during: "the confidential handshake",
                })
            }
        };
        let reply = mailbox
            .call(
                HandshakeArgs {
                    len: message.len() as u64,
                },
                &message,
            )
            .map_err(agent_err)?;
        pending = messages(mailbox.output())?;
        if reply.complete {
            for message in pending.drain(..) {
                link.send(&Message::Handshake { message })?;
            }
            return Ok(());
        }
    }
}
