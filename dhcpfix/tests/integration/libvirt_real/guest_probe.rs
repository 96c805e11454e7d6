//! Runs inside the Linux test guest (tests/support/libvirt_real.rs compiles
//! it statically with rustc and puts it in the initramfs as /probe).
//!
//! The receive path of an old DHCP client (busybox udhcpc before 1.21, ISC
//! dhclient before 4.2.8): a packet socket for IPv4 bound to the interface,
//! no `PACKET_AUXDATA`, so the kernel's "checksum not ready" status is never
//! seen, and the UDP checksum of each datagram to port 68 is verified over
//! the bytes received. One `DHCPFIX-RAW` line per datagram, then
//! `DHCPFIX-RAW-SUMMARY good=N bad=M`.
//!
//! Usage: `probe IFACE SECONDS`; it stops after a DHCPACK or after SECONDS.
//! std only: the C functions it needs are declared here.

use std::{
    ffi::c_void,
    time::{Duration, Instant},
};

const AF_PACKET: i32 = 17;
const SOCK_DGRAM: i32 = 2;
const ETH_P_IP: u16 = 0x0800;
const SOL_SOCKET: i32 = 1;
const SO_RCVTIMEO: i32 = 20;

#[repr(C)]
struct SockaddrLl {
    family: u16,
    protocol: u16,
    ifindex: i32,
    hatype: u16,
    pkttype: u8,
    halen: u8,
    addr: [u8; 8],
}

#[repr(C)]
struct Timeval {
    sec: i64,
    usec: i64,
}

extern "C" {
    fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
    fn bind(fd: i32, addr: *const c_void, len: u32) -> i32;
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const c_void, len: u32) -> i32;
    fn recv(fd: i32, buf: *mut c_void, len: usize, flags: i32) -> isize;
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// DHCP message type (option 53) of a BOOTP payload.
fn dhcp_type(bootp: &[u8]) -> Option<u8> {
    if bootp.get(236..240)? != [99, 130, 83, 99] {
        return None;
    }
    let mut i = 240;
    while let Some(&code) = bootp.get(i) {
        match code {
            0 => i += 1,
            255 => return None,
            _ => {
                let len = usize::from(*bootp.get(i + 1)?);
                if code == 53 && len == 1 {
                    return bootp.get(i + 2).copied();
                }
                i += 2 + len;
            }
        }
    }
    None
}

fn type_name(t: Option<u8>) -> String {
    match t {
        Some(2) => "OFFER".into(),
        Some(5) => "ACK".into(),
        Some(6) => "NAK".into(),
        Some(n) => format!("type{n}"),
        None => "bootp".into(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iface = args.get(1).map_or("eth0", String::as_str);
    let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let ifindex: i32 = std::fs::read_to_string(format!("/sys/class/net/{iface}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { socket(AF_PACKET, SOCK_DGRAM, i32::from(ETH_P_IP.to_be())) };
    if fd < 0 || ifindex == 0 {
        println!("DHCPFIX-RAW-SUMMARY error=socket ifindex={ifindex}");
        return;
    }
    let addr = SockaddrLl {
        family: AF_PACKET as u16,
        protocol: ETH_P_IP.to_be(),
        ifindex,
        hatype: 0,
        pkttype: 0,
        halen: 0,
        addr: [0; 8],
    };
    let tv = Timeval { sec: 1, usec: 0 };
    // SAFETY: bind(2)/setsockopt(2) on our socket, with pointers to live
    // values and their exact sizes.
    let ok = unsafe {
        bind(fd, (&addr as *const SockaddrLl).cast(), std::mem::size_of::<SockaddrLl>() as u32) == 0
            && setsockopt(
                fd,
                SOL_SOCKET,
                SO_RCVTIMEO,
                (&tv as *const Timeval).cast(),
                std::mem::size_of::<Timeval>() as u32,
            ) == 0
    };
    if !ok {
        println!("DHCPFIX-RAW-SUMMARY error=bind");
        return;
    }
    let (mut good, mut bad) = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        // SAFETY: recv(2) into a buffer of buf.len() bytes that we own.
        let n = unsafe { recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let ip = &buf[..n as usize];
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
            continue;
        }
        let ihl = usize::from(ip[0] & 15) * 4;
        let Some(udp) = ip.get(ihl..) else { continue };
        if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != 68 {
            continue;
        }
        let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        let Some(udp) = udp.get(..udp_len) else { continue };
        let check = u16::from_be_bytes([udp[6], udp[7]]);
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&ip[12..20]);
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
        let valid = check == 0 || fold(sum16(udp, sum16(&pseudo, 0))) == 0xffff;
        if valid {
            good += 1;
        } else {
            bad += 1;
        }
        let kind = dhcp_type(udp.get(8..).unwrap_or(&[]));
        println!(
            "DHCPFIX-RAW {} {} from {}.{}.{}.{} udp_check=0x{check:04x}",
            if valid { "good" } else { "bad" },
            type_name(kind),
            ip[12],
            ip[13],
            ip[14],
            ip[15]
        );
        if kind == Some(5) {
            break;
        }
    }
    println!("DHCPFIX-RAW-SUMMARY good={good} bad={bad}");
}
