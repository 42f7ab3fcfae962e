//! The SSRF guard for every URL a model hands a tool: only `http` and `https`, no
//! credentials in the URL, and no address a public web page could not be on — loopback,
//! private, shared (CGNAT), link-local, unique-local, unspecified, multicast, broadcast,
//! documentation, benchmarking and reserved ranges, cloud metadata endpoints, and IPv6
//! forms that carry one of those inside (IPv4-mapped, IPv4-compatible, NAT64, 6to4) — unless
//! the operator allows the network or host (`[tools.ssrf]`).
//!
//! Addresses are checked after DNS resolution, on every address a name resolves to, inside
//! the HTTP client's own resolver ([`VettedResolver`]): the client connects only to the
//! addresses that resolver vetted, so a name that answers a public address to a first
//! lookup and a private one to a second (DNS rebinding) gains nothing. Callers follow
//! redirects themselves and check each hop with [`Guard::check_url`].

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use shared::config::SsrfConfig;
use url::{Host, Url};

/// Why a URL or address is refused; the message names the address and its kind, e.g.
/// "127.0.0.1 is a loopback address".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Host names refused whatever they resolve to: cloud metadata services reachable by name.
const FORBIDDEN_NAMES: &[&str] = &["metadata.google.internal", "metadata.goog"];

/// IPv4 ranges refused, most specific first (the first match names the reason).
const V4_RANGES: &[(Ipv4Net, &str)] = &[
    (v4(169, 254, 169, 254, 32), "a cloud metadata address"),
    (v4(168, 63, 129, 16, 32), "a cloud metadata address (Azure)"),
    (v4(0, 0, 0, 0, 32), "the unspecified address"),
    (v4(255, 255, 255, 255, 32), "the broadcast address"),
    (v4(0, 0, 0, 0, 8), "a \"this network\" address"),
    (v4(10, 0, 0, 0, 8), "a private address"),
    (
        v4(100, 64, 0, 0, 10),
        "a shared (carrier-grade NAT) address",
    ),
    (v4(127, 0, 0, 0, 8), "a loopback address"),
    (v4(169, 254, 0, 0, 16), "a link-local address"),
    (v4(172, 16, 0, 0, 12), "a private address"),
    (v4(192, 0, 0, 0, 24), "an IETF protocol assignment address"),
    (v4(192, 0, 2, 0, 24), "a documentation address"),
    (v4(192, 88, 99, 0, 24), "a 6to4 relay anycast address"),
    (v4(192, 168, 0, 0, 16), "a private address"),
    (v4(198, 18, 0, 0, 15), "a benchmarking address"),
    (v4(198, 51, 100, 0, 24), "a documentation address"),
    (v4(203, 0, 113, 0, 24), "a documentation address"),
    (v4(224, 0, 0, 0, 4), "a multicast address"),
    (v4(240, 0, 0, 0, 4), "a reserved address"),
];

/// IPv6 ranges refused outright, most specific first. IPv4-mapped, NAT64 and 6to4
/// addresses are judged by the IPv4 address inside them ([`forbidden`]).
const V6_RANGES: &[(Ipv6Net, &str)] = &[
    (v6([0; 8], 128), "the unspecified address"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "a loopback address"),
    (
        v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        "a cloud metadata address",
    ),
    (
        v6([0; 8], 96),
        "an IPv4-compatible address (deprecated, refused)",
    ),
    (
        v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "a local-use NAT64 address",
    ),
    (
        v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
        "a discard-only address",
    ),
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), "a Teredo address"),
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        "an IETF protocol assignment address",
    ),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "a documentation address",
    ),
    (
        v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
        "a documentation address",
    ),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "a unique-local address",
    ),
    (
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        "a link-local address",
    ),
    (
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "a site-local address (deprecated)",
    ),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "a multicast address"),
];

/// NAT64's well-known prefix: the last 32 bits are an IPv4 address.
const NAT64: Ipv6Net = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
/// 6to4: bits 16 to 48 are an IPv4 address.
const SIX_TO_FOUR: Ipv6Net = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);
/// Global unicast: every other IPv6 address is reserved.
const GLOBAL_UNICAST: Ipv6Net = v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(s: [u16; 8], len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
    )
}

/// Why `ip` may not be reached from a model's URL (e.g. "a loopback address"), or `None`
/// for a public address. Pure: the operator's allowances are [`Guard`]'s.
pub fn forbidden(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip).map(str::to_owned),
        IpAddr::V6(ip) => forbidden_v6(ip),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    V4_RANGES
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, why)| *why)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<String> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4).map(|why| format!("an IPv4-mapped form of {v4}, {why}"));
    }
    if let Some((_, why)) = V6_RANGES.iter().find(|(net, _)| net.contains(&ip)) {
        return Some((*why).to_owned());
    }
    let bits = u128::from(ip);
    if NAT64.contains(&ip) {
        // The low 32 bits; truncation is the point.
        let v4 = Ipv4Addr::from(bits as u32);
        return forbidden_v4(v4).map(|why| format!("a NAT64 form of {v4}, {why}"));
    }
    if SIX_TO_FOUR.contains(&ip) {
        let v4 = Ipv4Addr::from((bits >> 80) as u32);
        return forbidden_v4(v4).map(|why| format!("a 6to4 form of {v4}, {why}"));
    }
    (!GLOBAL_UNICAST.contains(&ip))
        .then(|| "a reserved address (outside global unicast 2000::/3)".to_owned())
}

/// The guard with the operator's allowances.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow_networks: Vec<IpNet>,
    /// Lowercase, without a trailing dot.
    allow_hosts: Vec<String>,
}

impl Guard {
    pub fn new(config: &SsrfConfig) -> Self {
        Self {
            allow_networks: config.networks(),
            allow_hosts: config.allow_hosts.iter().map(|h| normalize(h)).collect(),
        }
    }

    /// Checks what can be checked of `url` before connecting: the scheme, credentials, a
    /// host that is an address (the URL parser has already turned `2130706433`, `0177.0.0.1`
    /// and `0x7f.1` into `127.0.0.1`), and forbidden names. Names are checked again, address
    /// by address, when the client resolves them ([`VettedResolver`]).
    pub fn check_url(&self, url: &Url) -> Result<(), Denied> {
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(Denied(format!(
                    "only http and https URLs may be fetched, not {other}:"
                )));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Denied(
                "URLs with credentials (user:password@) are refused".into(),
            ));
        }
        match url.host() {
            None => Err(Denied("the URL has no host".into())),
            Some(Host::Domain(name)) => self.check_name(name),
            Some(Host::Ipv4(ip)) => self.check_ip(&ip.to_string(), IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.check_ip(&ip.to_string(), IpAddr::V6(ip)),
        }
    }

    /// Refuses names that are metadata services whatever they resolve to.
    pub fn check_name(&self, name: &str) -> Result<(), Denied> {
        let name = normalize(name);
        if self.host_allowed(&name) {
            return Ok(());
        }
        if FORBIDDEN_NAMES.contains(&name.as_str()) {
            return Err(Denied(format!("{name} is a cloud metadata service")));
        }
        Ok(())
    }

    /// Refuses `ip` (which `host` is or resolved to) unless it is public or allowed.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Denied> {
        if self.host_allowed(&normalize(host)) || self.network_allowed(ip) {
            return Ok(());
        }
        match forbidden(ip) {
            None => Ok(()),
            Some(why) if host == ip.to_string() => Err(Denied(format!("{ip} is {why}"))),
            Some(why) => Err(Denied(format!("{host} resolves to {ip}, {why}"))),
        }
    }

    fn host_allowed(&self, name: &str) -> bool {
        self.allow_hosts.iter().any(|h| h == name)
    }

    fn network_allowed(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.allow_networks
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
    }
}

fn normalize(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// A boxed future of a lookup's addresses.
pub type LookupFuture = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;

/// Resolves a host name to addresses: the system's resolver in service, a scripted one in
/// tests.
pub trait Lookup: Send + Sync + fmt::Debug + 'static {
    fn lookup(&self, host: String) -> LookupFuture;
}

/// The system's resolver (`getaddrinfo`, on a blocking thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: String) -> LookupFuture {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// The HTTP client's resolver: looks a name up once, refuses it if any address it resolves
/// to is forbidden, and hands the client exactly the addresses it checked, so what the
/// client connects to is what was vetted.
#[derive(Debug, Clone)]
pub struct VettedResolver {
    guard: Arc<Guard>,
    lookup: Arc<dyn Lookup>,
}

impl VettedResolver {
    pub fn new(guard: Arc<Guard>, lookup: Arc<dyn Lookup>) -> Self {
        Self { guard, lookup }
    }

    /// The vetted addresses of `host`, or why it is refused.
    pub async fn vet(&self, host: &str) -> Result<Vec<IpAddr>, VetError> {
        self.guard.check_name(host).map_err(VetError::Denied)?;
        let ips = self
            .lookup
            .lookup(host.to_owned())
            .await
            .map_err(|e| VetError::Lookup(format!("looking up {host}: {e}")))?;
        if ips.is_empty() {
            return Err(VetError::Lookup(format!("{host} has no address")));
        }
        for ip in &ips {
            self.guard.check_ip(host, *ip).map_err(VetError::Denied)?;
        }
        Ok(ips)
    }
}

/// Why the resolver gave the client no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VetError {
    #[error(transparent)]
    Denied(Denied),
    #[error("{0}")]
    Lookup(String),
}

impl reqwest::dns::Resolve for VettedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let ips = resolver.vet(&host).await?;
            // Port 0: the client puts the URL's port in.
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The resolver's error inside an HTTP client's error, if that is why it failed.
pub fn vet_error_in(error: &(dyn std::error::Error + 'static)) -> Option<VetError> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(vet) = e.downcast_ref::<VetError>() {
            return Some(vet.clone());
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests;
