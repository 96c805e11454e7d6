//! `dhcpfix leases` against real DHCP conversations: real dnsmasq or
//! udhcpd, real ISC dhclient in the guest, the emulated vhost-net tap. What
//! dhcpfix reports is checked against the lab's own record of the
//! conversation (the relay's transcript: every DHCP message and whether its
//! checksum was good as the guest got it), against what the client says
//! (its script's events) and against the server's log.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use dhcpfix_lab::{
    kit::{poll, privileged},
    lab::{Client, Dhclient, DhcpFrame, GuestKind, Lab, LabOptions, Offload, ScriptEvent, Server},
};
use serde_json::Value;

use crate::support::{dhcpfix_ok, dhcpfix_ok_at, stats};

/// `52:54:00:ab:cd:ef`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The guests `dhcpfix --pin-dir PINS leases --json` shows on the lab's tap.
pub fn guests_at(lab: &Lab, pins: &Path) -> Vec<Value> {
    let out = dhcpfix_ok_at(
        lab,
        pins,
        &["leases", "--json", "--netns", lab.host_netns(), lab.tap_name()],
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("leases --json: {e}: {out}"));
    v["guests"].as_array().expect("guests").clone()
}

/// [`guests_at`] with the lab's pin directory.
pub fn guests(lab: &Lab) -> Vec<Value> {
    guests_at(lab, &lab.pin_dir())
}

/// The guest with `mac` and `family` among `guests`, if dhcpfix shows it.
pub fn find<'a>(guests: &'a [Value], mac: &str, family: u8) -> Option<&'a Value> {
    guests.iter().find(|g| g["mac"] == mac && g["family"] == family)
}

/// The MAC of the lab's guest, from the first message it sent (waited
/// for, up to 3 s).
pub fn guest_mac(lab: &Lab) -> String {
    let first = || lab.dhcp_frames().into_iter().find(|f| !f.to_guest);
    poll(Duration::from_secs(3), Duration::from_millis(20), || {
        first().is_some()
    })
    .expect("the guest sent nothing within 3 s");
    mac_text(first().expect("its first message stays").mac)
}

/// Polls `dhcpfix leases` (every 200 ms, up to `timeout`) until the guest
/// `mac` of `family` is in `state`; returns it and how long it took.
pub fn wait_state(
    lab: &Lab,
    pins: &Path,
    mac: &str,
    family: u8,
    state: &str,
    timeout: Duration,
) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let all = guests_at(lab, pins);
        if let Some(g) = find(&all, mac, family) {
            if g["state"] == state {
                return (g.clone(), start.elapsed());
            }
            if start.elapsed() > timeout {
                panic!(
                    "{mac} (v{family}) not {state} within {timeout:?}: {g:#}\n{:#?}",
                    lab.dhcp_frames()
                );
            }
        } else if start.elapsed() > timeout {
            panic!(
                "{mac} (v{family}) not shown within {timeout:?}: {all:#?}\n{:#?}",
                lab.dhcp_frames()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for one of `reasons` from the client's script; panics with its
/// log otherwise.
pub fn event(client: &Client, skip: usize, timeout: Duration, reasons: &[&str]) -> (usize, ScriptEvent) {
    client.wait_event(skip, timeout, reasons).unwrap_or_else(|| {
        panic!(
            "no {reasons:?} from the client within {timeout:?}:\n{}",
            client.log()
        )
    })
}

/// The replies the guest `mac` threw away, from the relay's transcript:
/// replies to it (OFFER, ADVERTISE) of its current transaction that reached
/// it with a bad checksum and after which it asked again (DISCOVER,
/// SOLICIT) in the same transaction. Each such request counts once.
pub fn thrown_away(frames: &[DhcpFrame], mac: [u8; 6], family: u8) -> u32 {
    // DISCOVER / SOLICIT, and OFFER / ADVERTISE: the same numbers in both.
    let (ask, offer) = (DhcpFrame::DISCOVER, DhcpFrame::OFFER);
    let (mut xid, mut bad_since, mut count) = (None, false, 0);
    for f in frames.iter().filter(|f| f.mac == mac && f.family == family) {
        if f.to_guest {
            bad_since |= Some(f.xid) == xid && f.msg_type == offer && !f.checksum_ok;
        } else if f.msg_type == ask {
            if Some(f.xid) != xid {
                count = 0;
            } else if bad_since {
                count += 1;
            }
            xid = Some(f.xid);
            bad_since = false;
        }
    }
    count
}

fn u64_of(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("no {field} in {v:#}"))
}

fn i64_of(v: &Value, field: &str) -> i64 {
    v[field].as_i64().unwrap_or_else(|| panic!("no {field} in {v:#}"))
}

/// Attached in audit mode (no fix), a legacy guest behind an offloading
/// tap never gets its OFFERs' checksums right: dhcpfix shows it rejecting,
/// and once the server is stopped and the guest has asked once more,
/// `requests_after_reply` equals the OFFERs it threw away, exactly: every
/// OFFER that reached it (all with a bad checksum, as the relay saw them,
/// as many as dnsmasq logged) was followed by another DISCOVER of the same
/// transaction.
#[test]
fn audit_mode_shows_a_legacy_guest_rejecting_its_offers() {
    if !privileged("audit_mode_shows_a_legacy_guest_rejecting_its_offers") {
        return;
    }
    let start = Instant::now();
    let mut lab = crate::support::lab(Offload::On, GuestKind::Legacy);
    dhcpfix_ok(&lab, &["attach", "--audit", lab.tap_name()]);
    let client = lab.start_dhclient(&Dhclient::default()).unwrap();
    let sent = |lab: &Lab| lab.dhcp_frames().iter().filter(|f| !f.to_guest).count();
    let mac = guest_mac(&lab);
    let (g, took) = wait_state(
        &lab,
        &lab.pin_dir(),
        &mac,
        4,
        "rejecting",
        Duration::from_secs(15),
    );
    eprintln!("rejecting after {took:.1?}: {g:#}");
    assert!(took < Duration::from_secs(15));
    // A few more rounds; then no more OFFERs, and one more DISCOVER shows
    // the last one thrown away too.
    let offered = |lab: &Lab| lab.dhcp_frames().iter().filter(|f| f.to_guest).count();
    assert!(
        poll(Duration::from_secs(10), Duration::from_millis(20), || offered(
            &lab
        ) >= 4)
        .is_some()
    );
    lab.stop_server().unwrap();
    let asked = sent(&lab);
    assert!(
        poll(Duration::from_secs(5), Duration::from_millis(20), || sent(&lab)
            > asked)
        .is_some()
    );
    let log = client.stop();
    assert!(
        !log.contains("bound to"),
        "the guest got a lease in audit mode:\n{log}"
    );

    let frames = lab.dhcp_frames();
    let ours: Vec<&DhcpFrame> = frames.iter().filter(|f| mac_text(f.mac) == mac).collect();
    let discovers = ours
        .iter()
        .filter(|f| !f.to_guest && f.msg_type == DhcpFrame::DISCOVER)
        .count();
    let offers: Vec<&&DhcpFrame> = ours
        .iter()
        .filter(|f| f.to_guest && f.msg_type == DhcpFrame::OFFER)
        .collect();
    assert!(
        offers.iter().all(|f| f.needs_csum && !f.checksum_ok),
        "{offers:?}"
    );
    let xids: std::collections::BTreeSet<u32> = ours.iter().map(|f| f.xid).collect();
    assert_eq!(xids.len(), 1, "one transaction: {ours:?}");
    assert_eq!(
        lab.dnsmasq_log().matches("DHCPOFFER(br0)").count(),
        offers.len(),
        "{}",
        lab.dnsmasq_log()
    );
    let want = thrown_away(&frames, ours[0].mac, 4);
    assert_eq!(
        want as usize,
        offers.len(),
        "each OFFER followed by a DISCOVER: {ours:?}"
    );
    assert!(want >= 3, "{ours:?}");

    let g = find(&guests(&lab), &mac, 4).cloned().expect("the guest");
    eprintln!("{g:#}");
    assert_eq!(g["state"], "rejecting");
    assert_eq!(u64_of(&g, "requests_after_reply"), u64::from(want), "{g:#}");
    assert_eq!(u64_of(&g, "rejected_replies"), u64::from(want), "{g:#}");
    assert_eq!(u64_of(&g, "requests_since_ack") as usize, discovers, "{g:#}");
    assert_eq!(u64_of(&g, "xid"), u64::from(ours[0].xid));
    let first_to_last = ours.last().unwrap().at - ours[0].at;
    assert!(
        u64_of(&g, "transaction_s").abs_diff(first_to_last.as_secs()) <= 1,
        "{g:#}"
    );
    assert_eq!(
        (g["last_request"].as_str(), g["last_reply"].as_str()),
        (Some("DISCOVER"), Some("OFFER"))
    );
    assert_eq!(g["last_ack_s_ago"], Value::Null);
    assert_eq!(g["ip"], offers[0].yiaddr.to_string(), "the address offered");
    assert_eq!(g["interface"], lab.tap_name());
    assert_eq!(g["netns"]["name"], lab.host_netns());
    // The counters saw the same OFFERs, none filled.
    let c = &stats(&lab, &lab.pin_dir(), lab.tap_name())["counters"];
    assert_eq!(
        (u64_of(c, "would_fill") as usize, u64_of(c, "filled")),
        (offers.len(), 0),
        "{c}"
    );
    eprintln!(
        "{discovers} DISCOVERs, {} OFFERs thrown away, requests_after_reply {want}; test took {:.1?}",
        offers.len(),
        start.elapsed()
    );
    lab.destroy().unwrap();
}

/// In fill mode the guest binds; dhcpfix shows the lease the server gave,
/// the address the client took, its host name and vendor class, and across
/// a real T1 renewal (the same client, no restart) the new ACK.
#[test]
fn fill_mode_shows_the_lease_and_its_renewal() {
    if !privileged("fill_mode_shows_the_lease_and_its_renewal") {
        return;
    }
    let start = Instant::now();
    let mut opts = LabOptions::new(Offload::On, GuestKind::Legacy);
    opts.lease = Duration::from_secs(120);
    opts.renew = Some(Duration::from_secs(6));
    opts.rebind = Some(Duration::from_secs(100));
    let lab = Lab::create(opts).unwrap_or_else(|e| panic!("{e}"));
    dhcpfix_ok(&lab, &["attach", lab.tap_name()]);
    let client = lab
        .start_dhclient(&Dhclient {
            hostname: Some("vm-leases".into()),
            vendor_class: Some("dhcpfix-lab/1".into()),
            ..Default::default()
        })
        .unwrap();
    let (at, bound) = event(&client, 0, Duration::from_secs(10), &["BOUND"]);
    let ip = bound.address().expect("an address").to_string();
    let mac = guest_mac(&lab);

    let g = find(&guests(&lab), &mac, 4).cloned().expect("the guest");
    eprintln!("bound: {g:#}");
    assert_eq!(g["state"], "bound");
    assert_eq!(g["ip"], ip);
    assert_eq!(
        g["lease_s"].as_u64().map(|l| l.to_string()).as_deref(),
        bound.var("new_dhcp_lease_time")
    );
    assert_eq!(u64_of(&g, "lease_s"), 120);
    assert_eq!(
        g["t1_s"].as_u64().map(|l| l.to_string()).as_deref(),
        bound.var("new_dhcp_renewal_time")
    );
    assert_eq!(
        g["t2_s"].as_u64().map(|l| l.to_string()).as_deref(),
        bound.var("new_dhcp_rebinding_time")
    );
    assert_eq!((u64_of(&g, "t1_s"), u64_of(&g, "t2_s")), (6, 100));
    assert_eq!(g["hostname"], "vm-leases");
    assert_eq!(g["vendor_class"], "dhcpfix-lab/1");
    assert!(u64_of(&g, "last_ack_s_ago") <= 1, "{g:#}");
    assert!((119..=120).contains(&i64_of(&g, "lease_remaining_s")), "{g:#}");
    assert_eq!(
        (u64_of(&g, "requests_after_reply"), u64_of(&g, "rejected_replies")),
        (0, 0)
    );
    assert_eq!(
        (g["last_request"].as_str(), g["last_reply"].as_str()),
        (Some("REQUEST"), Some("ACK"))
    );

    // Three seconds on, the lease has aged...
    thread::sleep(Duration::from_secs(3));
    let aged = find(&guests(&lab), &mac, 4).cloned().expect("the guest");
    assert!(u64_of(&aged, "last_ack_s_ago") >= 3, "{aged:#}");
    assert!(i64_of(&aged, "lease_remaining_s") <= 117, "{aged:#}");
    // ...then the client renews at T1 (dhclient: between 3/4 of T1 and T1),
    // from its address, and the server's ACK reaches it.
    let (_, renewed) = event(&client, at + 1, Duration::from_secs(8), &["RENEW"]);
    assert_eq!(renewed.address().map(|a| a.to_string()), Some(ip.clone()));
    let g = find(&guests(&lab), &mac, 4).cloned().expect("the guest");
    eprintln!("renewed: {g:#}");
    assert_eq!(g["state"], "bound");
    assert!(u64_of(&g, "last_ack_s_ago") <= 1, "the ACK of the renewal: {g:#}");
    assert!(i64_of(&g, "lease_remaining_s") >= 119, "a fresh lease: {g:#}");
    assert_eq!(u64_of(&g, "lease_s"), 120);
    assert_eq!(g["ip"], ip);
    assert_eq!(
        (u64_of(&g, "requests_after_reply"), u64_of(&g, "rejected_replies")),
        (0, 0),
        "{g:#}"
    );
    // What crossed the tap: DISCOVER, OFFER, REQUEST, ACK, then the
    // renewal's REQUEST and ACK; every reply filled and good.
    let frames = lab.dhcp_frames();
    let mut kinds: Vec<(bool, u8)> = frames.iter().map(|f| (f.to_guest, f.msg_type)).collect();
    // (A retransmission, and the server's answer to it, now and then.)
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            (false, 1),
            (true, 2),
            (false, 3),
            (true, 5),
            (false, 3),
            (true, 5)
        ],
        "{frames:?}"
    );
    assert!(frames.iter().all(|f| f.checksum_ok), "{frames:?}");
    let c = &stats(&lab, &lab.pin_dir(), lab.tap_name())["counters"];
    let replies = frames.iter().filter(|f| f.to_guest).count() as u64;
    assert_eq!(u64_of(c, "filled"), replies, "{c}");
    let log = client.stop();
    eprintln!("{log}test took {:.1?}", start.elapsed());
    lab.destroy().unwrap();
}

/// The server goes away after the guest bound: dhcpfix shows it renewing
/// from T1, rebinding from T2, expired when the lease runs out, each within
/// 2 s of when the ACK it got says. udhcpd: a 20 s lease (dnsmasq gives two
/// minutes at least), no T1/T2 options, so the RFC's 10 s and 17.5 s.
#[test]
fn a_guest_whose_server_is_gone_goes_renewing_rebinding_expired() {
    if !privileged("a_guest_whose_server_is_gone_goes_renewing_rebinding_expired") {
        return;
    }
    let start = Instant::now();
    let mut opts = LabOptions::new(Offload::On, GuestKind::Legacy);
    opts.server = Server::Udhcpd;
    opts.lease = Duration::from_secs(20);
    let mut lab = Lab::create(opts).unwrap_or_else(|e| panic!("{e}"));
    dhcpfix_ok(&lab, &["attach", lab.tap_name()]);
    let client = lab.start_dhclient(&Dhclient::default()).unwrap();
    let (at, bound) = event(&client, 0, Duration::from_secs(10), &["BOUND"]);
    lab.stop_server().unwrap();
    let frames = lab.dhcp_frames();
    let ack = frames
        .iter()
        .find(|f| f.to_guest && f.msg_type == DhcpFrame::ACK)
        .expect("the ACK");
    let mac = mac_text(ack.mac);
    let since_ack = || lab.started().elapsed().saturating_sub(ack.at).as_secs_f64();

    let g = find(&guests(&lab), &mac, 4).cloned().expect("the guest");
    assert_eq!(
        (g["state"].as_str(), u64_of(&g, "lease_s")),
        (Some("bound"), 20),
        "{g:#}"
    );
    assert_eq!((u64_of(&g, "t1_s"), u64_of(&g, "t2_s")), (10, 17), "{g:#}");
    assert_eq!(g["ip"], bound.address().unwrap().to_string());
    // When dhcpfix first shows each state, in seconds after the ACK.
    let mut seen: Vec<(String, f64)> = vec![("bound".into(), since_ack())];
    while since_ack() < 25.0 {
        let g = find(&guests(&lab), &mac, 4).cloned().expect("the guest");
        let state = g["state"].as_str().unwrap().to_owned();
        if seen.last().map(|(s, _)| s) != Some(&state) {
            eprintln!("{:5.1} s: {state}: {g}", since_ack());
            seen.push((state.clone(), since_ack()));
        }
        if state == "expired" {
            assert!(i64_of(&g, "lease_remaining_s") <= 0, "{g:#}");
            assert!(u64_of(&g, "requests_since_ack") > 0, "{g:#}");
            assert_eq!(u64_of(&g, "rejected_replies"), 0, "{g:#}");
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let states: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(states, ["bound", "renewing", "rebinding", "expired"], "{seen:?}");
    for ((state, at), want) in seen[1..].iter().zip([10.0, 17.5, 20.0]) {
        assert!(
            (at - want).abs() <= 2.0,
            "{state} at {at:.1} s after the ACK, not {want} s: {seen:?}"
        );
    }
    // The client agrees: its lease ran out 20 s after the ACK.
    let (_, expired) = event(&client, at + 1, Duration::from_secs(5), &["EXPIRE"]);
    let client_expiry = client_started(&lab, &client) + expired.at.as_secs_f64() - ack.at.as_secs_f64();
    eprintln!("the client's EXPIRE came {client_expiry:.1} s after the ACK");
    assert!((client_expiry - 20.0).abs() <= 2.0, "{}", client.log());
    let log = client.stop();
    eprintln!("{log}test took {:.1?}", start.elapsed());
    lab.destroy().unwrap();
}

/// When `client` started, on the lab's clock (seconds).
fn client_started(lab: &Lab, client: &Client) -> f64 {
    (lab.started().elapsed().saturating_sub(client.elapsed())).as_secs_f64()
}

/// A guest flooding DISCOVERs from thousands of random MACs churns only its
/// own tap's slots: the real guest on another tap (another lab, the same
/// loaded program and maps) keeps its state, and the flooding tap never
/// shows more than 4 guests per family.
#[test]
fn random_macs_on_one_tap_cannot_evict_a_guest_on_another() {
    if !privileged("random_macs_on_one_tap_cannot_evict_a_guest_on_another") {
        return;
    }
    const FLOOD: u64 = 5000;
    let start = Instant::now();
    let flooder = crate::support::lab(Offload::On, GuestKind::Legacy);
    let victim = crate::support::lab(Offload::On, GuestKind::Legacy);
    // One pin directory, so one program and one guests map, for both.
    let pins = flooder.pin_dir();
    dhcpfix_ok_at(&flooder, &pins, &["attach", flooder.tap_name()]);
    dhcpfix_ok_at(&victim, &pins, &["attach", victim.tap_name()]);
    let client = victim
        .start_dhclient(&Dhclient {
            hostname: Some("victim".into()),
            ..Default::default()
        })
        .unwrap();
    let (_, bound) = event(&client, 0, Duration::from_secs(10), &["BOUND"]);
    let mac = guest_mac(&victim);
    let before = find(&guests_at(&victim, &pins), &mac, 4)
        .cloned()
        .expect("the victim");
    assert_eq!(before["state"], "bound");

    let sent = thread::scope(|s| {
        let flood = s.spawn(|| flooder.flood_discovers(FLOOD, 0x5eed).unwrap());
        // While it floods, the flooding tap stays within its slots.
        while !flood.is_finished() {
            let now = guests_at(&flooder, &pins);
            assert!(
                now.len() <= 8,
                "{} guests on the flooding tap: {now:#?}",
                now.len()
            );
            thread::sleep(Duration::from_millis(100));
        }
        flood.join().unwrap()
    });
    thread::sleep(Duration::from_millis(500));
    let frames = flooder.dhcp_frames();
    let discovers = frames
        .iter()
        .filter(|f| !f.to_guest && f.msg_type == DhcpFrame::DISCOVER)
        .count();
    let offers = frames
        .iter()
        .filter(|f| f.to_guest && f.msg_type == DhcpFrame::OFFER)
        .count();
    let macs: std::collections::BTreeSet<[u8; 6]> = frames.iter().map(|f| f.mac).collect();
    eprintln!(
        "{sent} sent, {discovers} DISCOVERs and {offers} OFFERs crossed the flooding tap, {} MACs",
        macs.len()
    );
    assert_eq!(sent, FLOOD);
    assert_eq!(discovers as u64, FLOOD, "the relay passed every DISCOVER on");
    assert!(
        offers > 50,
        "dnsmasq answered the flood too (replies are tracked as well)"
    );

    let flooded = guests_at(&flooder, &pins);
    eprintln!("flooding tap: {flooded:#?}");
    assert!(!flooded.is_empty() && flooded.len() <= 4, "{flooded:#?}");
    assert!(flooded
        .iter()
        .all(|g| g["family"] == 4 && g["netns"]["name"] == flooder.host_netns()));
    let after = find(&guests_at(&victim, &pins), &mac, 4)
        .cloned()
        .expect("the victim was evicted");
    eprintln!("victim after: {after:#}");
    for field in [
        "state",
        "ip",
        "xid",
        "lease_s",
        "hostname",
        "requests_since_ack",
        "rejected_replies",
    ] {
        assert_eq!(after[field], before[field], "{field}: {before:#} -> {after:#}");
    }
    assert_eq!(after["ip"], bound.address().unwrap().to_string());
    // The same ACK, only older.
    let aged = u64_of(&after, "last_ack_s_ago") as i64 - u64_of(&before, "last_ack_s_ago") as i64;
    let waited = start.elapsed().as_secs() as i64;
    assert!((0..=waited).contains(&aged), "{before:#} -> {after:#}");
    let log = client.stop();
    eprintln!("{log}test took {:.1?}", start.elapsed());
    victim.destroy().unwrap();
    flooder.destroy().unwrap();
}

/// busybox udhcpc, the other raw-socket client: it keeps its transaction
/// id across retransmissions too, and dhcpfix counts exactly the OFFERs it
/// asked again after.
#[test]
fn audit_mode_shows_udhcpc_rejecting_its_offers() {
    if !privileged("audit_mode_shows_udhcpc_rejecting_its_offers") {
        return;
    }
    let start = Instant::now();
    let lab = crate::support::lab(Offload::On, GuestKind::Legacy);
    dhcpfix_ok(&lab, &["attach", "--audit", lab.tap_name()]);
    // Five DISCOVERs a second apart, then it gives up.
    let out = lab.run_udhcpc(Duration::from_secs(6)).unwrap();
    assert!(out.lease.is_none(), "{}", out.log);
    thread::sleep(Duration::from_millis(300));
    let frames = lab.dhcp_frames();
    let mac = guest_mac(&lab);
    let offers = frames
        .iter()
        .filter(|f| f.to_guest && f.msg_type == DhcpFrame::OFFER)
        .count();
    assert!(
        frames.iter().filter(|f| f.to_guest).all(|f| !f.checksum_ok),
        "{frames:?}"
    );
    let want = thrown_away(&frames, frames[0].mac, 4);
    assert!(want >= 3 && want as usize >= offers - 1, "{frames:?}");
    let g = find(&guests(&lab), &mac, 4).cloned().expect("the guest");
    eprintln!("{g:#}");
    assert_eq!(g["state"], "rejecting");
    assert_eq!(u64_of(&g, "requests_after_reply"), u64::from(want), "{frames:?}");
    assert_eq!(u64_of(&g, "rejected_replies"), u64::from(want));
    eprintln!(
        "{offers} OFFERs, {want} asked again after; test took {:.1?}",
        start.elapsed()
    );
    lab.destroy().unwrap();
}
