//! Which lookup a query name asks for, following Consul's DNS names
//! (<https://developer.hashicorp.com/consul/docs/services/discovery/dns-static-lookups>):
//!
//! - `<service>.service[.<dc>].<domain>` and `<tag>.<service>.service[.<dc>].<domain>`
//!   (a tag may itself hold dots, as Consul joins the leading labels);
//! - RFC 2782 `_<service>._<tag>.service[.<dc>].<domain>`, where `_tcp` means no tag;
//! - `<node>.node[.<dc>].<domain>` (a node name may hold dots);
//! - `<hex-ip>.addr[.<dc>].<domain>` (8 hex digits for IPv4, 32 for IPv6);
//! - the datacenter also as `<dc>.dc` (Consul 1.x's longer form);
//! - `<reversed-ip>.in-addr.arpa` / `ip6.arpa` for PTR.
//!
//! Labels are compared in lower case (a [`LowerName`]); the domain and the alt
//! domain are equivalent. Owns: parsing names. Must not touch: what is
//! answered for them.

use hickory_proto::rr::{LowerName, Name};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A lookup in the registry's domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Instances of a service.
    Service {
        /// The datacenter named in the query, if any.
        dc: Option<String>,
        /// The service name.
        service: String,
        /// Only instances with this tag.
        tag: Option<String>,
    },
    /// A node's address.
    Node {
        /// The datacenter named in the query, if any.
        dc: Option<String>,
        /// The node name.
        node: String,
    },
    /// An address spelled in hex (`.addr.`).
    Addr(IpAddr),
    /// The domain itself (SOA, NS).
    Apex,
    /// A name in the domain that no form matches: NXDOMAIN.
    Invalid,
}

/// The domain and the alt domain, each as lower-case labels.
#[derive(Clone, Debug)]
pub struct Domains {
    /// `--domain`, as a name (for SOA records), e.g. `consul.`.
    pub primary: Name,
    /// `--alt-domain`, if any.
    pub alt: Option<Name>,
    /// Labels of `primary`, lower case.
    primary_labels: Vec<Vec<u8>>,
    /// Labels of `alt`, lower case.
    alt_labels: Option<Vec<Vec<u8>>>,
}

/// Why a `--domain` or `--alt-domain` was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid domain {0:?}: {1}")]
pub struct DomainError(pub String, pub String);

impl Domains {
    /// The domains, from their spelling on the command line (`consul`,
    /// `consul.` and `Consul` are the same).
    pub fn new(primary: &str, alt: Option<&str>) -> Result<Domains, DomainError> {
        let parse = |d: &str| -> Result<(Name, Vec<Vec<u8>>), DomainError> {
            let trimmed = d.trim_end_matches('.');
            if trimmed.is_empty() {
                return Err(DomainError(d.into(), "must not be empty".into()));
            }
            let mut name = Name::from_ascii(trimmed)
                .map_err(|e| DomainError(d.into(), e.to_string()))?
                .to_lowercase();
            name.set_fqdn(true);
            let labels = name.iter().map(|l| l.to_vec()).collect();
            Ok((name, labels))
        };
        let (primary, primary_labels) = parse(primary)?;
        let (alt, alt_labels) = match alt.filter(|a| !a.is_empty()) {
            Some(a) => {
                let (n, l) = parse(a)?;
                (Some(n), Some(l))
            }
            None => (None, None),
        };
        Ok(Domains {
            primary,
            alt,
            primary_labels,
            alt_labels,
        })
    }

    /// The lookup `name` asks for and the domain it is in, or `None` when it
    /// is in neither domain (a recursor's business).
    pub fn parse(&self, name: &LowerName) -> Option<(Lookup, &Name)> {
        let name: &Name = name;
        let labels: Vec<&[u8]> = name.iter().collect();
        let strip = |domain: &[Vec<u8>]| -> Option<usize> {
            let n = labels.len().checked_sub(domain.len())?;
            labels[n..]
                .iter()
                .zip(domain)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
                .then_some(n)
        };
        // The longer domain first, in case one is inside the other.
        let mut candidates = vec![(&self.primary_labels, &self.primary)];
        if let (Some(l), Some(n)) = (&self.alt_labels, &self.alt) {
            candidates.push((l, n));
        }
        candidates.sort_by_key(|(l, _)| std::cmp::Reverse(l.len()));
        for (domain_labels, domain) in candidates {
            if let Some(n) = strip(domain_labels) {
                let rest: Vec<String> = labels[..n]
                    .iter()
                    .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
                    .collect();
                return Some((parse_labels(rest), domain));
            }
        }
        None
    }
}

/// Consul's parse of the labels in front of the domain, from the right.
fn parse_labels(mut labels: Vec<String>) -> Lookup {
    if labels.is_empty() {
        return Lookup::Apex;
    }
    let mut dc: Option<String> = None;
    loop {
        let n = labels.len();
        let Some(last) = labels.last() else {
            return Lookup::Invalid;
        };
        match last.as_str() {
            "service" => return service(&labels[..n - 1], dc),
            "node" => {
                if n == 1 {
                    return Lookup::Invalid;
                }
                return Lookup::Node {
                    dc,
                    node: labels[..n - 1].join("."),
                };
            }
            "addr" => {
                if n != 2 {
                    return Lookup::Invalid;
                }
                return match hex_ip(&labels[0]) {
                    Some(ip) => Lookup::Addr(ip),
                    None => Lookup::Invalid,
                };
            }
            // `<dc>.dc`: only where a lookup type stands before the datacenter,
            // so a datacenter that is itself named "dc" still works the short way.
            "dc" if dc.is_none()
                && n >= 3
                && matches!(labels[n - 3].as_str(), "service" | "node" | "addr") =>
            {
                dc = Some(labels[n - 2].clone());
                labels.truncate(n - 2);
            }
            _ => {
                if dc.is_some() {
                    return Lookup::Invalid;
                }
                dc = labels.pop();
            }
        }
    }
}

/// `labels` in front of `service`.
fn service(labels: &[String], dc: Option<String>) -> Lookup {
    match labels {
        [] => Lookup::Invalid,
        // RFC 2782: `_<service>._<protocol or tag>`.
        [svc, tag]
            if svc.len() > 1 && tag.len() > 1 && svc.starts_with('_') && tag.starts_with('_') =>
        {
            let tag = &tag[1..];
            Lookup::Service {
                dc,
                service: svc[1..].to_string(),
                tag: (tag != "tcp").then(|| tag.to_string()),
            }
        }
        [svc] => Lookup::Service {
            dc,
            service: svc.clone(),
            tag: None,
        },
        [tags @ .., svc] => Lookup::Service {
            dc,
            service: svc.clone(),
            tag: Some(tags.join(".")),
        },
    }
}

/// An address spelled as 8 (IPv4) or 32 (IPv6) hex digits, as Consul writes
/// SRV targets for instances with their own address.
fn hex_ip(label: &str) -> Option<IpAddr> {
    let digits = |s: &str| -> Option<Vec<u8>> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect()
    };
    match label.len() {
        8 => {
            let b = digits(label)?;
            Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
        }
        32 => {
            let b: [u8; 16] = digits(label)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// The `.addr.` label for `ip` (the inverse of [`hex_ip`]).
pub fn hex_label(ip: IpAddr) -> String {
    let bytes: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa.`, or the 32 nibbles of
/// `ip6.arpa.`) stands for, if it is one.
pub fn reverse_ip(name: &LowerName) -> Option<IpAddr> {
    let name: &Name = name;
    let labels: Vec<String> = name
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    match labels.as_slice() {
        [a, b, c, d, in_addr, arpa] if in_addr == "in-addr" && arpa == "arpa" => {
            let o = |s: &String| s.parse::<u8>().ok();
            Some(IpAddr::V4(Ipv4Addr::new(o(d)?, o(c)?, o(b)?, o(a)?)))
        }
        [nibbles @ .., ip6, arpa] if nibbles.len() == 32 && ip6 == "ip6" && arpa == "arpa" => {
            let mut bytes = [0u8; 16];
            for (i, nib) in nibbles.iter().rev().enumerate() {
                let v = u8::from_str_radix(nib, 16)
                    .ok()
                    .filter(|_| nib.len() == 1)?;
                bytes[i / 2] |= if i % 2 == 0 { v << 4 } else { v };
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn lookup(d: &Domains, name: &str) -> Option<Lookup> {
        let n = LowerName::from(Name::from_str(name).unwrap());
        d.parse(&n).map(|(l, _)| l)
    }

    fn svc(dc: Option<&str>, service: &str, tag: Option<&str>) -> Option<Lookup> {
        Some(Lookup::Service {
            dc: dc.map(Into::into),
            service: service.into(),
            tag: tag.map(Into::into),
        })
    }

    #[test]
    fn every_name_form() {
        let d = Domains::new("consul", Some("alt.example")).unwrap();
        assert_eq!(lookup(&d, "web.service.consul."), svc(None, "web", None));
        assert_eq!(lookup(&d, "WEB.Service.CONSUL."), svc(None, "web", None));
        assert_eq!(
            lookup(&d, "web.service.dc2.consul."),
            svc(Some("dc2"), "web", None)
        );
        assert_eq!(
            lookup(&d, "web.service.dc2.dc.consul."),
            svc(Some("dc2"), "web", None)
        );
        assert_eq!(
            lookup(&d, "v1.web.service.consul."),
            svc(None, "web", Some("v1"))
        );
        assert_eq!(
            lookup(&d, "a.b.web.service.dc1.consul."),
            svc(Some("dc1"), "web", Some("a.b"))
        );
        assert_eq!(
            lookup(&d, "_web._http.service.consul."),
            svc(None, "web", Some("http"))
        );
        assert_eq!(
            lookup(&d, "_web._tcp.service.consul."),
            svc(None, "web", None)
        );
        assert_eq!(
            lookup(&d, "_web._tcp.service.dc2.consul."),
            svc(Some("dc2"), "web", None)
        );
        assert_eq!(
            lookup(&d, "web.service.alt.example."),
            svc(None, "web", None)
        );
        assert_eq!(
            lookup(&d, "n1.node.consul."),
            Some(Lookup::Node {
                dc: None,
                node: "n1".into()
            })
        );
        assert_eq!(
            lookup(&d, "host.example.node.dc2.consul."),
            Some(Lookup::Node {
                dc: Some("dc2".into()),
                node: "host.example".into()
            })
        );
        assert_eq!(
            lookup(&d, "0a000001.addr.dc1.consul."),
            Some(Lookup::Addr("10.0.0.1".parse().unwrap()))
        );
        assert_eq!(
            lookup(&d, "20010db8000000000000000000000001.addr.consul."),
            Some(Lookup::Addr("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(lookup(&d, "consul."), Some(Lookup::Apex));
        // A datacenter named "dc" is still a datacenter.
        assert_eq!(
            lookup(&d, "web.service.dc.consul."),
            svc(Some("dc"), "web", None)
        );
    }

    #[test]
    fn names_in_the_domain_that_match_no_form_are_invalid() {
        let d = Domains::new("consul.", None).unwrap();
        for name in [
            "service.consul.",
            "node.consul.",
            "web.consul.",
            "web.service.dc1.dc2.consul.",
            "zz.addr.consul.",
            "0a0000.addr.consul.",
            "dc1.consul.",
        ] {
            assert_eq!(lookup(&d, name), Some(Lookup::Invalid), "{name}");
        }
    }

    #[test]
    fn names_outside_the_domains_are_not_ours() {
        let d = Domains::new("consul", None).unwrap();
        assert_eq!(lookup(&d, "example.com."), None);
        assert_eq!(lookup(&d, "notconsul."), None);
        assert_eq!(lookup(&d, "."), None);
        assert!(Domains::new("", None).is_err());
        assert!(Domains::new("bad..domain", None).is_err());
    }

    #[test]
    fn reverse_names_and_hex_labels() {
        let n = |s: &str| LowerName::from(Name::from_str(s).unwrap());
        assert_eq!(
            reverse_ip(&n("4.3.2.10.in-addr.arpa.")),
            Some("10.2.3.4".parse().unwrap())
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let nibbles: String = hex_label(v6)
            .chars()
            .rev()
            .map(|c| format!("{c}."))
            .collect();
        assert_eq!(reverse_ip(&n(&format!("{nibbles}ip6.arpa."))), Some(v6));
        assert_eq!(reverse_ip(&n("300.3.2.1.in-addr.arpa.")), None);
        assert_eq!(reverse_ip(&n("example.com.")), None);
        assert_eq!(hex_label("10.0.0.1".parse().unwrap()), "0a000001");
        assert_eq!(hex_ip(&hex_label(v6)), Some(v6));
    }
}
