//! DHCPv6 end to end: dnsmasq giving out addresses (IA_NA) on the bridge,
//! ISC `dhclient -6` in a legacy guest behind an offloading tap. The
//! client reads replies through an ordinary UDP socket, so here it is the
//! guest's kernel that drops them for their unfinished checksum.

use std::{
    thread,
    time::{Duration, Instant},
};

use dhcpfix_lab::{
    kit::{poll, privileged},
    lab::{Dhclient, DhcpFrame, GuestKind, Lab, LabOptions, Offload},
};

use crate::{
    leases::{event, find, guest_mac, guests, mac_text, thrown_away, wait_state},
    support::{dhcpfix_ok, stats},
};

fn u64_of(v: &serde_json::Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("no {field} in {v:#}"))
}

/// The DHCPv6 replies (ADVERTISE, REPLY) that reached the guest, from the
/// `skip`-th message of the transcript on.
fn replies(lab: &Lab, skip: usize) -> Vec<DhcpFrame> {
    lab.dhcp_frames()
        .into_iter()
        .skip(skip)
        .filter(|f| f.family == 6 && f.to_guest)
        .collect()
}

/// Without the fill (attached in audit mode: not a byte changed) the guest's
/// kernel drops every ADVERTISE for its checksum, and dhcpfix shows the
/// guest rejecting them; with it, the guest gets its address, every reply
/// filled, and `dhcpfix leases` shows it bound with its IA_NA address and
/// lifetimes.
#[test]
fn dhcpv6_guest_gets_its_address_only_with_dhcpfix() {
    if !privileged("dhcpv6_guest_gets_its_address_only_with_dhcpfix") {
        return;
    }
    let start = Instant::now();
    let mut opts = LabOptions::new(Offload::On, GuestKind::Legacy);
    opts.dhcpv6 = true;
    opts.lease = Duration::from_secs(120);
    let lab = Lab::create(opts).unwrap_or_else(|e| panic!("{e}"));
    let client_opts = Dhclient {
        v6: true,
        hostname: Some("vm6".into()),
        ..Default::default()
    };

    // 1. Audit mode: no lease.
    let out = dhcpfix_ok(&lab, &["attach", "--audit", lab.tap_name()]);
    assert!(out.contains("546,547"), "DHCPv6 ports watched by default: {out}");
    let errors_before = lab.guest_udp_csum_errors().unwrap();
    let client = lab.start_dhclient(&client_opts).unwrap();
    let mac = guest_mac(&lab);
    let (g, took) = wait_state(
        &lab,
        &lab.pin_dir(),
        &mac,
        6,
        "rejecting",
        Duration::from_secs(15),
    );
    eprintln!("audit: rejecting after {took:.1?}: {g:#}");
    // SOLICITs at about 0, 1, 3 s: wait for the third's ADVERTISE.
    assert!(
        poll(Duration::from_secs(8), Duration::from_millis(20), || replies(
            &lab, 0
        )
        .len()
            >= 3)
        .is_some()
    );
    thread::sleep(Duration::from_millis(200));
    let log = client.stop();
    assert!(!log.contains("BOUND6"), "a lease without the fill:\n{log}");
    let advertised = replies(&lab, 0);
    assert!(
        advertised
            .iter()
            .all(|f| f.msg_type == DhcpFrame::ADVERTISE && f.needs_csum && !f.checksum_ok),
        "{advertised:?}"
    );
    // The guest's kernel dropped each one.
    let dropped = lab.guest_udp_csum_errors().unwrap() - errors_before;
    assert_eq!(dropped, advertised.len() as u64, "{advertised:?}");
    let frames = lab.dhcp_frames();
    let g = find(&guests(&lab), &mac, 6).cloned().expect("the v6 guest");
    eprintln!("{g:#}");
    assert_eq!(g["state"], "rejecting");
    assert_eq!(
        u64_of(&g, "requests_after_reply"),
        u64::from(thrown_away(&frames, frames[0].mac, 6)),
        "{frames:?}"
    );
    assert!(u64_of(&g, "requests_after_reply") >= 2, "{g:#}");
    assert_eq!(
        (g["last_request"].as_str(), g["last_reply"].as_str()),
        (Some("SOLICIT"), Some("ADVERTISE"))
    );
    let c = &stats(&lab, &lab.pin_dir(), lab.tap_name())["counters"];
    assert_eq!(
        (u64_of(c, "would_fill"), u64_of(c, "filled")),
        (advertised.len() as u64, 0),
        "{c}"
    );

    // 2. Fill mode: the address.
    dhcpfix_ok(&lab, &["detach", lab.tap_name()]);
    dhcpfix_ok(&lab, &["attach", lab.tap_name()]);
    let skip = frames.len();
    let errors_before = lab.guest_udp_csum_errors().unwrap();
    let client = lab.start_dhclient(&client_opts).unwrap();
    let (_, bound) = event(&client, 0, Duration::from_secs(10), &["BOUND6"]);
    eprintln!("bound after {:.1?}: {bound:?}", client.elapsed());
    let ip = bound.address().expect("an address");
    assert!(ip.to_string().starts_with("fd00:dfc:"), "{ip}");
    let filled_replies = replies(&lab, skip);
    assert!(
        filled_replies.iter().all(|f| f.needs_csum && f.checksum_ok),
        "{filled_replies:?}"
    );
    assert_eq!(lab.guest_udp_csum_errors().unwrap(), errors_before);
    let c = &stats(&lab, &lab.pin_dir(), lab.tap_name())["counters"];
    assert!(u64_of(c, "filled") > 0, "{c}");
    assert_eq!(u64_of(c, "filled"), filled_replies.len() as u64, "{c}");
    assert_eq!(u64_of(c, "seen"), u64_of(c, "filled"), "{c}");

    let g = find(&guests(&lab), &mac, 6).cloned().expect("the v6 guest");
    eprintln!("{g:#}");
    assert_eq!(g["state"], "bound");
    assert_eq!(g["ip"], ip.to_string());
    let var = |name: &str| bound.var(name).and_then(|v| v.parse::<u64>().ok());
    assert_eq!(g["lease_s"].as_u64(), var("new_max_life"), "valid lifetime");
    assert_eq!(u64_of(&g, "lease_s"), 120);
    assert_eq!(g["t1_s"].as_u64(), var("new_renew"));
    assert_eq!(g["t2_s"].as_u64(), var("new_rebind"));
    assert!(
        (118..=120).contains(&g["lease_remaining_s"].as_i64().unwrap()),
        "{g:#}"
    );
    assert_eq!(g["hostname"], "vm6");
    assert_eq!(
        (g["last_request"].as_str(), g["last_reply"].as_str()),
        (Some("REQUEST"), Some("REPLY"))
    );
    assert_eq!(g["requests_after_reply"], 0);
    assert_eq!(g["mac"], mac_text(filled_replies[0].mac));
    let log = client.stop();
    eprintln!("{log}test took {:.1?}", start.elapsed());
    lab.destroy().unwrap();
}
