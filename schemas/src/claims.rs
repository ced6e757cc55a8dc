//! The `xsite-failover` header of a heartbeat: what the sending site says of each
//! active-passive cache in failover mode `lease` — the epoch and primary it knows,
//! and whether it is running for primary or voting for a site that is.
//!
//! ```text
//! sessions=3@site-a,carts=1@-,orders=2@site-a/candidate:1733150000123,
//! profiles=4@site-b/vote:site-c:1733150000456
//! ```
//!
//! One claim per cache, separated by `,`: `<cache>=<epoch>@<primary>` (`-`: no
//! primary known), then optionally `/candidate:<k>` (the sender is the primary's
//! successor, has not heard the primary for `failover_after_ms` and runs for
//! primary; `k` names this candidacy) or `/vote:<site>:<k>` (the sender, the
//! witness, has not heard the primary for `failover_after_ms` either and votes for
//! candidacy `k` of `<site>`). Names are lowercase letters, digits, `-` and `_`, so
//! none of the separators can occur in them.
//!
//! A primary counts a heartbeat as acknowledging it (renewing its lease) only if
//! its claim names that primary at its epoch, with neither flag: a site that runs
//! for primary, or votes for another, grants no lease. Builds before the witness
//! send no header; a heartbeat without it acknowledges as it always did.
//!
//! It is a header, not part of the entry (readers that do not know it ignore it),
//! so it needs no format version.

use crate::names::{CacheName, SiteId};
use std::collections::BTreeMap;
use std::fmt;

/// Kafka header of a heartbeat carrying this site's [`Claims`].
pub const KAFKA_HEADER_FAILOVER: &str = "xsite-failover";

/// What a site says of one active-passive cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub epoch: u64,
    /// The primary the site knows (`None`: none).
    pub primary: Option<SiteId>,
    pub flag: Option<Flag>,
}

/// Whether the site runs for primary, or votes for a site that does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flag {
    /// The successor runs for primary; the number names the candidacy.
    Candidate(u64),
    /// The witness votes for candidacy `candidacy` of `candidate`.
    Vote { candidate: SiteId, candidacy: u64 },
}

/// Every claim of one heartbeat, by cache.
pub type Claims = BTreeMap<CacheName, Claim>;

impl Claim {
    /// Whether this claim acknowledges `site` as the primary at `epoch`: it names
    /// it at that epoch, and the sender neither runs for primary nor votes.
    pub fn acknowledges(&self, site: &SiteId, epoch: u64) -> bool {
        self.epoch == epoch && self.primary.as_ref() == Some(site) && self.flag.is_none()
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.epoch, self.primary.as_ref().map_or("-", SiteId::as_str))?;
        match &self.flag {
            None => Ok(()),
            Some(Flag::Candidate(k)) => write!(f, "/candidate:{k}"),
            Some(Flag::Vote { candidate, candidacy }) => write!(f, "/vote:{candidate}:{candidacy}"),
        }
    }
}

/// The header's text for `claims`.
pub fn encode_claims(claims: &Claims) -> String {
    claims.iter().map(|(cache, claim)| format!("{cache}={claim}")).collect::<Vec<_>>().join(",")
}

/// Reads a header's text; an error names what is wrong.
pub fn decode_claims(text: &[u8]) -> Result<Claims, String> {
    let text = std::str::from_utf8(text).map_err(|_| "the failover header is not UTF-8".to_string())?;
    let mut claims = Claims::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (cache, claim) = part.split_once('=').ok_or_else(|| format!("claim '{part}' has no '='"))?;
        let cache = CacheName::new(cache).map_err(|e| format!("claim '{part}': {e}"))?;
        claims.insert(cache, decode_claim(claim).map_err(|e| format!("claim '{part}': {e}"))?);
    }
    Ok(claims)
}

fn decode_claim(text: &str) -> Result<Claim, String> {
    let (head, flag) = match text.split_once('/') {
        Some((head, flag)) => (head, Some(flag)),
        None => (text, None),
    };
    let (epoch, primary) = head.split_once('@').ok_or("no '@' between epoch and primary")?;
    let epoch = epoch.parse().map_err(|_| format!("epoch '{epoch}' is not a number"))?;
    let primary = match primary {
        "-" => None,
        p => Some(SiteId::new(p).map_err(|e| e.to_string())?),
    };
    let number = |n: &str| n.parse::<u64>().map_err(|_| format!("candidacy '{n}' is not a number"));
    let flag = match flag.map(|f| f.split(':').collect::<Vec<_>>()).as_deref() {
        None => None,
        Some(["candidate", k]) => Some(Flag::Candidate(number(k)?)),
        Some(["vote", site, k]) => {
            Some(Flag::Vote { candidate: SiteId::new(*site).map_err(|e| e.to_string())?, candidacy: number(k)? })
        }
        Some(other) => return Err(format!("unknown flag '{}'", other.join(":"))),
    };
    Ok(Claim { epoch, primary, flag })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(s: &str) -> SiteId {
        SiteId::new(s).unwrap()
    }

    #[test]
    fn claims_read_back_as_written() {
        let mut claims = Claims::new();
        claims
            .insert(CacheName::new("sessions").unwrap(), Claim { epoch: 3, primary: Some(site("site-a")), flag: None });
        claims.insert(CacheName::new("carts").unwrap(), Claim { epoch: 1, primary: None, flag: None });
        claims.insert(
            CacheName::new("orders").unwrap(),
            Claim { epoch: 2, primary: Some(site("site-a")), flag: Some(Flag::Candidate(17)) },
        );
        claims.insert(
            CacheName::new("profiles").unwrap(),
            Claim {
                epoch: 4,
                primary: Some(site("site-b")),
                flag: Some(Flag::Vote { candidate: site("site-c"), candidacy: 9 }),
            },
        );
        let text = encode_claims(&claims);
        assert_eq!(text, "carts=1@-,orders=2@site-a/candidate:17,profiles=4@site-b/vote:site-c:9,sessions=3@site-a");
        assert_eq!(decode_claims(text.as_bytes()).unwrap(), claims);
        assert_eq!(decode_claims(b"").unwrap(), Claims::new());
    }

    #[test]
    fn only_a_plain_claim_of_the_primary_at_its_epoch_acknowledges_it() {
        let a = site("site-a");
        let plain = Claim { epoch: 3, primary: Some(a.clone()), flag: None };
        assert!(plain.acknowledges(&a, 3));
        assert!(!plain.acknowledges(&a, 4));
        assert!(!plain.acknowledges(&site("site-b"), 3));
        let running = Claim { flag: Some(Flag::Candidate(1)), ..plain.clone() };
        assert!(!running.acknowledges(&a, 3));
        let voting = Claim { flag: Some(Flag::Vote { candidate: site("site-b"), candidacy: 1 }), ..plain };
        assert!(!voting.acknowledges(&a, 3));
    }

    #[test]
    fn malformed_claims_are_refused_with_what_is_wrong() {
        for (text, says) in [
            ("sessions", "no '='"),
            ("sessions=x@site-a", "epoch 'x'"),
            ("sessions=3", "no '@'"),
            ("sessions=3@site-a/elected:1", "unknown flag"),
            ("sessions=3@site-a/candidate:z", "candidacy 'z'"),
            ("Sessions=3@site-a", "Sessions"),
        ] {
            let err = decode_claims(text.as_bytes()).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
