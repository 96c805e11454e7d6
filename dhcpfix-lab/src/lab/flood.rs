//! A misbehaving guest: DHCPDISCOVERs from random MACs with random
//! transaction ids, written on the guest's side of the tap through a packet
//! socket, as a guest flooding its host would send them.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::{Lab, LabError, GUEST_TAP};
use crate::kit::{
    dev,
    reference::{Check, FrameSpec, Rng},
    KitError,
};

/// `ETH_P_ALL`: what the packet socket is bound to (it only sends).
const ETH_P_ALL: u16 = 0x0003;
/// Frames per burst, and the pause after each: well inside the guest
/// tap's queue, so the relay passes every one of them on.
const BURST: u64 = 100;
const PAUSE: Duration = Duration::from_millis(2);

/// A DHCPDISCOVER (300 bytes of BOOTP, option 53 only) from `mac` with
/// transaction `xid`, broadcast from 0.0.0.0:68 to 255.255.255.255:67 with
/// correct checksums.
pub fn discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut bootp = vec![0u8; 300];
    bootp[0] = 1; // BOOTREQUEST
    bootp[1] = 1; // Ethernet
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(&xid.to_be_bytes());
    bootp[28..34].copy_from_slice(&mac);
    bootp[236..240].copy_from_slice(&[99, 130, 83, 99]);
    bootp[240..244].copy_from_slice(&[53, 1, 1, 255]);
    let spec = FrameSpec {
        vlans: vec![],
        ip_options: 0,
        src: [0, 0, 0, 0],
        dst: [255, 255, 255, 255],
        sport: 68,
        dport: 67,
        payload: bootp,
        more_fragments: false,
        frag_offset: 0,
        trailer: 0,
        ipv6: None,
    };
    let mut frame = spec.build(Check::Complete);
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&mac);
    frame
}

/// A random locally administered unicast MAC.
pub fn random_mac(rng: &mut Rng) -> [u8; 6] {
    let mut mac: [u8; 6] = rng.bytes(6).try_into().unwrap_or([2, 0, 0, 0, 0, 1]);
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// Sends `count` DISCOVERs from random MACs (seeded by `seed`) out of the
/// guest's interface; returns how many the kernel took.
pub(crate) fn flood_discovers(lab: &Lab, count: u64, seed: u64) -> Result<u64, LabError> {
    let frames: Vec<Vec<u8>> = {
        let mut rng = Rng::new(seed);
        (0..count)
            .map(|_| {
                let mac = random_mac(&mut rng);
                discover(mac, rng.next_u64() as u32)
            })
            .collect()
    };
    let sent = crate::kit::netns::in_netns(&lab.guest_netns_path(), move || -> Result<u64, KitError> {
        let name = CString::new(GUEST_TAP).map_err(|_| KitError::Sys {
            op: "if_nametoindex",
            error: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        // SAFETY: `name` is a valid NUL-terminated string for the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(KitError::sys("if_nametoindex")(std::io::Error::last_os_error()));
        }
        let sock = dev::packet_socket(0).map_err(KitError::sys("socket(AF_PACKET)"))?;
        dev::bind_packet(&sock, ifindex, ETH_P_ALL).map_err(KitError::sys("bind(AF_PACKET)"))?;
        let mut sent = 0;
        for (i, frame) in frames.iter().enumerate() {
            // SAFETY: `frame` is readable for its length during the call.
            let n = unsafe { libc::send(sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n == frame.len() as isize {
                sent += 1;
            }
            if (i as u64 + 1).is_multiple_of(BURST) {
                std::thread::sleep(PAUSE);
            }
        }
        Ok(sent)
    })??;
    Ok(sent)
}
