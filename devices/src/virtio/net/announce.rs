//! Telling the network where a migrated guest now is.
//!
//! A driver that accepted `VIRTIO_NET_F_GUEST_ANNOUNCE` (with the control
//! queue, as Linux does) is asked to announce itself: the device sets
//! `VIRTIO_NET_S_ANNOUNCE` in its status and signals a configuration
//! change; the guest sends its gratuitous ARPs (it knows its addresses)
//! and acknowledges on the control queue (virtio 1.2 §5.1.6.5.4). For a
//! driver that did not, covm announces the guest's MAC itself, as QEMU
//! does: RARP frames from the guest's address, so switches learn its new
//! port.

use std::time::Duration;

/// The control queue's `class` of announcement commands.
pub const CTRL_ANNOUNCE: u8 = 3;
/// The command acknowledging an announcement.
pub const CTRL_ANNOUNCE_ACK: u8 = 0;
/// Control command results.
pub const CTRL_OK: u8 = 0;
/// The device does not support the command.
pub const CTRL_ERR: u8 = 1;
/// `status` bit: the driver should announce itself.
pub const STATUS_ANNOUNCE: u16 = 2;

/// When covm's own announcements go out after the switch, as QEMU spaces
/// its five (50 ms, then 100 ms longer each time).
pub const RARP_SCHEDULE: [Duration; 5] = [
    Duration::from_millis(0),
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(450),
    Duration::from_millis(800),
];

/// A RARP request from `mac` (RFC 903): the frame switches learn a MAC's
/// port from, as QEMU's self-announcement, with the 12-byte virtio-net
/// header the TAP expects in front.
pub fn rarp_frame(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; super::tap::VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]); // to everyone
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x8035u16.to_be_bytes()); // EtherType RARP
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f.extend_from_slice(&[6, 4]); // address lengths
    f.extend_from_slice(&3u16.to_be_bytes()); // reverse request
    f.extend_from_slice(&mac); // sender hardware address
    f.extend_from_slice(&[0; 4]); // sender protocol address
    f.extend_from_slice(&mac); // target hardware address
    f.extend_from_slice(&[0; 4]); // target protocol address
                                  // Padded to Ethernet's 60-byte minimum.
    f.resize(super::tap::VNET_HDR_LEN + 60, 0);
    f
}

/// The result of a control command `class`/`command`: only the
/// announcement's acknowledgement is supported (covm offers no other
/// control feature); `acked` is called for it.
pub fn control_result(class: u8, command: u8, acked: impl FnOnce()) -> u8 {
    if (class, command) == (CTRL_ANNOUNCE, CTRL_ANNOUNCE_ACK) {
        acked();
        CTRL_OK
    } else {
        CTRL_ERR
    }
}

/// Asks the driver to announce the guest (`announcer`: its interrupt,
/// and whether it announces itself), or announces its MAC from the host,
/// on a thread of its own, where the driver cannot.
pub(super) fn announce(
    shared: &std::sync::Arc<super::Shared>,
    mac: [u8; 6],
    announcer: Option<&(std::sync::Arc<dyn crate::virtio::VirtioInterrupt>, bool)>,
) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if let Some((interrupt, true)) = announcer {
        shared.announce.store(true, Ordering::SeqCst);
        interrupt.config_changed();
        return;
    }
    let shared = shared.clone();
    let frame = rarp_frame(mac);
    let sent = std::thread::Builder::new()
        .name("virtio-net-announce".into())
        .spawn(move || {
            let start = std::time::Instant::now();
            for at in RARP_SCHEDULE {
                std::thread::sleep(at.saturating_sub(start.elapsed()));
                let tap = super::lock(&shared.tap).clone();
                if let Some(tap) = tap {
                    if let Err(e) = tap.file().write(&frame) {
                        shared.tap_error(&e);
                    }
                }
            }
        });
    if let Err(e) = sent {
        tracing::warn!("virtio-net: cannot announce the migrated guest: {e}");
    }
}

/// Answers the control queue's commands: each chain is a class and
/// command byte (and their data) the device reads, then one result byte
/// it writes.
pub(super) fn serve_control(
    memory: &super::GuestMemory,
    queue: &mut virtio_queue::Queue,
    mut acked: impl FnMut(),
) -> Result<bool, virtio_queue::Error> {
    use std::io::{Read, Write};
    use virtio_queue::{QueueOwnedT, QueueT, Reader, Writer};
    let chains: Vec<_> = queue.iter(memory)?.collect();
    let used = !chains.is_empty();
    for chain in chains {
        let head = chain.head_index();
        let mut written = 0;
        if let (Ok(mut reader), Ok(mut writer)) = (Reader::new(memory, chain.clone()), Writer::new(memory, chain)) {
            let mut command = [0u8; 2];
            let result = match reader.read_exact(&mut command) {
                Ok(()) => control_result(command[0], command[1], &mut acked),
                Err(_) => CTRL_ERR,
            };
            // The result is the last device-writable byte.
            let at = writer.available_bytes().saturating_sub(1);
            if writer.available_bytes() > 0 {
                let mut split = writer.split_at(at).ok();
                if let Some(tail) = split.as_mut() {
                    if tail.write_all(&[result]).is_ok() {
                        written = (at + 1) as u32;
                    }
                }
            }
        }
        queue.add_used(memory, head, written)?;
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rarp_frame_is_laid_out_as_rfc_903_says() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let f = rarp_frame(mac);
        let eth = &f[super::super::tap::VNET_HDR_LEN..];
        assert_eq!(eth.len(), 60);
        assert_eq!(&eth[..6], &[0xff; 6]);
        assert_eq!(&eth[6..12], &mac);
        assert_eq!(&eth[12..14], &[0x80, 0x35]);
        assert_eq!(&eth[14..22], &[0, 1, 8, 0, 6, 4, 0, 3]);
        assert_eq!(&eth[22..28], &mac);
        assert_eq!(&eth[32..38], &mac);
    }

    #[test]
    fn only_the_announcement_ack_is_supported() {
        let mut acked = false;
        assert_eq!(control_result(3, 0, || acked = true), CTRL_OK);
        assert!(acked);
        assert_eq!(control_result(0, 0, || panic!()), CTRL_ERR);
        assert_eq!(control_result(3, 1, || panic!()), CTRL_ERR);
    }
}
