//! The guard's table of refused addresses, what the URL parser makes of odd host forms, the
//! operator's allowances, and DNS rebinding against real servers on two loopback addresses.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use fake_provider::upstreams::FakeUpstreams;
use serde_json::json;
use shared::config::{HttpFetchConfig, SsrfConfig};
use shared::tools::ToolErrorClass;

use super::*;
use crate::http_fetch::Fetcher;

#[test]
fn every_non_public_range_is_refused_with_its_reason() {
    for (ip, why) in [
        ("127.0.0.1", "a loopback address"),
        ("127.255.0.9", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("172.31.255.255", "a private address"),
        ("192.168.1.1", "a private address"),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("100.127.255.254", "a shared (carrier-grade NAT) address"),
        ("169.254.10.20", "a link-local address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("168.63.129.16", "a cloud metadata address (Azure)"),
        ("0.0.0.0", "the unspecified address"),
        ("0.1.2.3", "a \"this network\" address"),
        ("255.255.255.255", "the broadcast address"),
        ("224.0.0.251", "a multicast address"),
        ("239.255.255.250", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("192.0.2.10", "a documentation address"),
        ("198.51.100.7", "a documentation address"),
        ("203.0.113.99", "a documentation address"),
        ("198.18.0.1", "a benchmarking address"),
        ("192.0.0.192", "an IETF protocol assignment address"),
        ("192.88.99.1", "a 6to4 relay anycast address"),
        ("::", "the unspecified address"),
        ("::1", "a loopback address"),
        ("fe80::1", "a link-local address"),
        ("febf:ffff::1", "a link-local address"),
        ("fc00::1", "a unique-local address"),
        ("fd12:3456::1", "a unique-local address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("ff02::1", "a multicast address"),
        ("fec0::1", "a site-local address (deprecated)"),
        ("2001:db8::1", "a documentation address"),
        ("3fff::1", "a documentation address"),
        ("100::1", "a discard-only address"),
        ("2001:0:4136:e378::1", "a Teredo address"),
        ("2001:2::1", "an IETF protocol assignment address"),
        ("64:ff9b:1::a00:1", "a local-use NAT64 address"),
        (
            "::127.0.0.1",
            "an IPv4-compatible address (deprecated, refused)",
        ),
        (
            "::8.8.8.8",
            "an IPv4-compatible address (deprecated, refused)",
        ),
        (
            "::ffff:127.0.0.1",
            "an IPv4-mapped form of 127.0.0.1, a loopback address",
        ),
        (
            "::ffff:169.254.169.254",
            "an IPv4-mapped form of 169.254.169.254, a cloud metadata address",
        ),
        (
            "::ffff:10.0.0.1",
            "an IPv4-mapped form of 10.0.0.1, a private address",
        ),
        (
            "64:ff9b::7f00:1",
            "a NAT64 form of 127.0.0.1, a loopback address",
        ),
        (
            "64:ff9b::a9fe:a9fe",
            "a NAT64 form of 169.254.169.254, a cloud metadata address",
        ),
        (
            "2002:c0a8:0101::1",
            "a 6to4 form of 192.168.1.1, a private address",
        ),
        (
            "4000::1",
            "a reserved address (outside global unicast 2000::/3)",
        ),
    ] {
        let addr: IpAddr = ip.parse().unwrap();
        assert_eq!(forbidden(addr).as_deref(), Some(why), "{ip}");
    }
    for public in [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.215.14",
        "172.32.0.1",
        "100.128.0.1",
        "11.0.0.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ] {
        assert_eq!(forbidden(public.parse().unwrap()), None, "{public}");
    }
}

fn url(text: &str) -> Url {
    Url::parse(text).unwrap()
}

#[test]
fn the_url_parser_normalizes_numeric_hosts_and_the_guard_refuses_them() {
    let guard = Guard::default();
    // Decimal, octal, hexadecimal and short IPv4 forms are all 127.0.0.1 once parsed: the
    // guard sees (and the client connects to) the normalized address.
    for (written, host) in [
        ("http://2130706433/", "127.0.0.1"),
        ("http://0177.0.0.1/", "127.0.0.1"),
        ("http://0x7f.1/", "127.0.0.1"),
        ("http://0x7f000001/", "127.0.0.1"),
        ("http://127.1/", "127.0.0.1"),
        ("http://017700000001/", "127.0.0.1"),
        (
            "http://0xA9.0xFE.0xA9.0xFE/latest/meta-data/",
            "169.254.169.254",
        ),
        ("http://0/", "0.0.0.0"),
    ] {
        let parsed = url(written);
        assert_eq!(parsed.host_str(), Some(host), "{written}");
        let refused = guard.check_url(&parsed).unwrap_err();
        assert!(
            refused.0.starts_with(&format!("{host} is ")),
            "{written}: {refused}"
        );
    }
    assert_eq!(
        guard.check_url(&url("http://0x7f.1/")).unwrap_err().0,
        "127.0.0.1 is a loopback address"
    );
    // IPv6 literals: mapped forms are written back in hex, and judged by what they carry.
    let mapped = url("http://[::ffff:127.0.0.1]:8080/");
    assert_eq!(mapped.host_str(), Some("[::ffff:7f00:1]"));
    assert_eq!(
        guard.check_url(&mapped).unwrap_err().0,
        "::ffff:127.0.0.1 is an IPv4-mapped form of 127.0.0.1, a loopback address"
    );
    assert!(guard.check_url(&url("http://[::1]/")).is_err());
    assert!(guard.check_url(&url("http://[fd00:ec2::254]/")).is_err());
    assert!(
        guard
            .check_url(&url("http://[64:ff9b::a9fe:a9fe]/"))
            .is_err()
    );
    // Public addresses and names pass (names are checked again when resolved).
    assert!(guard.check_url(&url("https://8.8.8.8/")).is_ok());
    assert!(
        guard
            .check_url(&url("https://example.com:8443/a?b"))
            .is_ok()
    );
}

#[test]
fn schemes_credentials_and_metadata_names_are_refused() {
    let guard = Guard::default();
    for (written, why) in [
        (
            "ftp://example.com/file",
            "only http and https URLs may be fetched, not ftp:",
        ),
        (
            "file:///etc/passwd",
            "only http and https URLs may be fetched, not file:",
        ),
        (
            "gopher://example.com/",
            "only http and https URLs may be fetched, not gopher:",
        ),
        (
            "http://user:pass@example.com/",
            "URLs with credentials (user:password@) are refused",
        ),
        (
            "http://user@example.com/",
            "URLs with credentials (user:password@) are refused",
        ),
        (
            "http://metadata.google.internal/computeMetadata/v1/",
            "metadata.google.internal is a cloud metadata service",
        ),
        (
            "http://METADATA.google.internal./",
            "metadata.google.internal is a cloud metadata service",
        ),
    ] {
        assert_eq!(
            guard.check_url(&url(written)).unwrap_err().0,
            why,
            "{written}"
        );
    }
}

#[test]
fn operators_allow_networks_and_hosts_explicitly() {
    let guard = Guard::new(&SsrfConfig {
        allow_networks: vec![
            "127.0.0.1/32".into(),
            "10.8.0.0/16".into(),
            "fd00::/8".into(),
        ],
        allow_hosts: vec!["Intranet.Example".into()],
    });
    assert!(guard.check_url(&url("http://127.0.0.1:9000/")).is_ok());
    assert!(guard.check_url(&url("http://[::ffff:127.0.0.1]/")).is_ok());
    assert!(guard.check_url(&url("http://127.0.0.2/")).is_err());
    assert!(
        guard
            .check_ip("10.8.3.4", "10.8.3.4".parse().unwrap())
            .is_ok()
    );
    assert!(
        guard
            .check_ip("10.9.0.1", "10.9.0.1".parse().unwrap())
            .is_err()
    );
    assert!(guard.check_ip("x", "fd12::1".parse().unwrap()).is_ok());
    // The metadata address stays refused unless allowed itself.
    assert!(guard.check_url(&url("http://169.254.169.254/")).is_err());
    // An allowed host may resolve anywhere.
    assert!(
        guard
            .check_ip("intranet.example.", "192.168.0.5".parse().unwrap())
            .is_ok()
    );
    assert_eq!(
        guard
            .check_ip("other.example", "192.168.0.5".parse().unwrap())
            .unwrap_err()
            .0,
        "other.example resolves to 192.168.0.5, a private address"
    );
}

/// A resolver that answers from a script, one answer per lookup, and counts lookups.
#[derive(Debug)]
struct Scripted {
    answers: Mutex<VecDeque<Vec<IpAddr>>>,
    lookups: AtomicUsize,
}

impl Scripted {
    fn new(answers: &[&[&str]]) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(
                answers
                    .iter()
                    .map(|a| a.iter().map(|ip| ip.parse().unwrap()).collect())
                    .collect(),
            ),
            lookups: AtomicUsize::new(0),
        })
    }
}

impl Lookup for Scripted {
    fn lookup(&self, _host: String) -> LookupFuture {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = self.answers.lock().unwrap().pop_front();
        Box::pin(
            async move { answer.ok_or_else(|| std::io::Error::other("no more scripted answers")) },
        )
    }
}

#[tokio::test]
async fn every_resolved_address_is_vetted() {
    let lookup = Scripted::new(&[&["93.184.215.14", "10.0.0.7"], &[], &["2606:4700::1"]]);
    let resolver = VettedResolver::new(Arc::new(Guard::default()), lookup.clone());
    // One private address among public ones refuses the name.
    assert_eq!(
        resolver.vet("mixed.example").await.unwrap_err(),
        VetError::Denied(Denied(
            "mixed.example resolves to 10.0.0.7, a private address".into()
        ))
    );
    assert!(matches!(
        resolver.vet("empty.example").await,
        Err(VetError::Lookup(_))
    ));
    assert_eq!(
        resolver.vet("v6.example").await.unwrap(),
        vec!["2606:4700::1".parse::<IpAddr>().unwrap()]
    );
    // Metadata names are refused before any lookup.
    let before = lookup.lookups.load(Ordering::SeqCst);
    assert!(matches!(
        resolver.vet("metadata.google.internal").await,
        Err(VetError::Denied(_))
    ));
    assert_eq!(lookup.lookups.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn a_name_that_rebinds_to_a_forbidden_address_never_reaches_it() {
    // Two real servers: "public" on 127.0.0.2 (allowed below, standing in for a public
    // address) and "private" on 127.0.0.1 (refused), on the same port so only the address
    // differs.
    let public = FakeUpstreams::bind("127.0.0.2:0".parse().unwrap())
        .await
        .unwrap();
    let private = FakeUpstreams::bind(format!("127.0.0.1:{}", public.addr.port()).parse().unwrap())
        .await
        .unwrap();
    // The name answers the allowed address first and the forbidden one on every later
    // lookup: the rebinding attack.
    let lookup = Scripted::new(&[&["127.0.0.2"], &["127.0.0.1"], &["127.0.0.1"]]);
    let fetcher = Fetcher::new(
        &HttpFetchConfig::default(),
        &SsrfConfig {
            allow_networks: vec!["127.0.0.2/32".into()],
            allow_hosts: Vec::new(),
        },
        lookup.clone(),
    )
    .unwrap();
    let page = format!(
        "http://rebind.example:{}/pages/notes.txt",
        public.addr.port()
    );
    let first = fetcher.call(&json!({"url": page})).await.unwrap();
    assert_eq!(first["text"], "Plain notes.\nLine two.\n");
    // One fetch, one lookup: the client connected to the address the guard checked.
    assert_eq!(lookup.lookups.load(Ordering::SeqCst), 1);
    assert_eq!(public.hits(), 1);
    // The next fetch looks the name up again and is refused: nothing reaches 127.0.0.1.
    let second = fetcher.call(&json!({"url": page})).await.unwrap_err();
    assert_eq!(second.class, ToolErrorClass::Denied);
    assert_eq!(
        second.message,
        "rebind.example resolves to 127.0.0.1, a loopback address"
    );
    assert_eq!(lookup.lookups.load(Ordering::SeqCst), 2);
    assert_eq!(private.hits(), 0);
    assert_eq!(public.hits(), 1);
}

mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// An IPv6 form that carries an IPv4 address is refused exactly when that address
        /// is: wrapping a loopback or metadata address in IPv6 gains nothing.
        #[test]
        fn ipv6_wrappers_are_judged_by_the_ipv4_inside(bits: u32) {
            let v4 = Ipv4Addr::from(bits);
            let refused = forbidden(IpAddr::V4(v4)).is_some();
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            let nat64 = IpAddr::V6(Ipv6Addr::from((0x64_ff9b_u128 << 96) | u128::from(bits)));
            let six_to_four =
                IpAddr::V6(Ipv6Addr::from((0x2002_u128 << 112) | (u128::from(bits) << 80) | 1));
            prop_assert_eq!(forbidden(mapped).is_some(), refused);
            prop_assert_eq!(forbidden(nat64).is_some(), refused);
            prop_assert_eq!(forbidden(six_to_four).is_some(), refused);
            // The compatible form is refused whatever it carries.
            prop_assert!(forbidden(IpAddr::V6(v4.to_ipv6_compatible())).is_some());
        }

        /// Nothing outside global unicast (2000::/3) passes.
        #[test]
        fn only_global_unicast_ipv6_passes(bits: u128) {
            let ip = Ipv6Addr::from(bits);
            if forbidden(IpAddr::V6(ip)).is_none() {
                prop_assert!(GLOBAL_UNICAST.contains(&ip) || ip.to_ipv4_mapped().is_some());
            }
        }
    }
}
