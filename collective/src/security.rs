//! Who may join a ring: the job's shared secret, the HMAC proofs of the handshake, and whether ring data runs
//! over TLS.
//!
//! Both sides of a connection prove they hold the secret with an HMAC-SHA256 over everything the handshake
//! agreed on (job, generation, both ranks, world size, both nonces) and the TLS channel binding, each side under
//! its own domain string, so no proof can be replayed on another connection, reflected to the other direction
//! or relayed through a man in the middle's own TLS sessions.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Shortest ring secret accepted (the coordinator hands out 32 random bytes).
pub(crate) const MIN_SECRET_BYTES: usize = 16;

/// Bytes of fresh randomness each side puts in its hello or ack.
pub(crate) const NONCE_BYTES: usize = 32;

/// Shortest nonce accepted from a peer.
pub(crate) const MIN_NONCE_BYTES: usize = 16;

/// Bytes of an HMAC-SHA256 proof.
pub(crate) const PROOF_BYTES: usize = 32;

/// How a ring authenticates its members and protects its data. The coordinator hands every rank of a job the
/// same random secret and TLS flag with its assignment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RingSecurity {
    /// The job's ring secret: every connection proves both ends hold it. Empty: no proofs, anyone naming the
    /// right job, generation and rank joins (the behaviour before protocol v3). Otherwise at least 16 bytes.
    pub secret: Vec<u8>,
    /// Runs the handshake and all ring data inside TLS 1.3, with the proofs bound to the TLS session. Without
    /// a secret it only encrypts (against passive eavesdroppers): nobody is authenticated.
    pub tls: bool,
}

impl RingSecurity {
    /// No secret, no TLS: what [`RingAllReduce::establish`](crate::RingAllReduce::establish) uses.
    pub fn unauthenticated() -> Self {
        RingSecurity {
            secret: Vec::new(),
            tls: false,
        }
    }

    /// Proofs with `secret`, ring data over TLS when `tls`.
    pub fn new(secret: impl Into<Vec<u8>>, tls: bool) -> Self {
        RingSecurity {
            secret: secret.into(),
            tls,
        }
    }

    /// Whether connections must prove they hold the secret.
    pub fn is_authenticated(&self) -> bool {
        !self.secret.is_empty()
    }

    /// Why this cannot secure a ring, if it cannot.
    pub(crate) fn problem(&self) -> Option<String> {
        (self.is_authenticated() && self.secret.len() < MIN_SECRET_BYTES).then(|| {
            format!(
                "the ring secret has {} bytes, at least {MIN_SECRET_BYTES} are needed",
                self.secret.len()
            )
        })
    }
}

/// The secret never appears in logs or error messages.
impl std::fmt::Debug for RingSecurity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RingSecurity")
            .field("secret_bytes", &self.secret.len())
            .field("tls", &self.tls)
            .finish()
    }
}

/// Fresh random bytes for a hello or an ack (the thread-local generator is a CSPRNG seeded by the OS).
pub(crate) fn fresh_nonce() -> Vec<u8> {
    let mut nonce = vec![0u8; NONCE_BYTES];
    rand::rng().fill_bytes(&mut nonce);
    nonce
}

/// Which side a proof comes from; each has its own domain string, so a proof of one side is never valid as
/// the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProofDirection {
    /// In the `PeerHelloAck`, from the accepting side.
    Acceptor,
    /// In the `PeerProof`, from the connecting side.
    Connector,
}

impl ProofDirection {
    fn domain(self) -> &'static [u8] {
        match self {
            ProofDirection::Acceptor => b"plankton-ring-ack-v3",
            ProofDirection::Connector => b"plankton-ring-hello-v3",
        }
    }
}

/// Everything one connection's handshake agreed on; both proofs cover all of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandshakeTranscript<'a> {
    pub job_id: &'a str,
    pub generation: u32,
    pub acceptor_rank: u32,
    pub connector_rank: u32,
    pub world_size: u32,
    pub connector_nonce: &'a [u8],
    pub acceptor_nonce: &'a [u8],
    /// The TLS session's exported keying material; empty on plain TCP.
    pub channel_binding: &'a [u8],
}

impl HandshakeTranscript<'_> {
    /// HMAC-SHA256 under `secret` of the direction's domain and the transcript, each item length-prefixed.
    pub(crate) fn proof(&self, secret: &[u8], direction: ProofDirection) -> [u8; PROOF_BYTES] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .expect("HMAC-SHA256 takes a key of any length");
        let mut add = |item: &[u8]| {
            mac.update(&(item.len() as u64).to_le_bytes());
            mac.update(item);
        };
        add(direction.domain());
        add(self.job_id.as_bytes());
        add(&u64::from(self.generation).to_le_bytes());
        add(&u64::from(self.acceptor_rank).to_le_bytes());
        add(&u64::from(self.connector_rank).to_le_bytes());
        add(&u64::from(self.world_size).to_le_bytes());
        add(self.connector_nonce);
        add(self.acceptor_nonce);
        add(self.channel_binding);
        mac.finalize().into_bytes().into()
    }

    /// Whether `received` is the proof of `direction` for this transcript under `secret` (constant time).
    pub(crate) fn verify(&self, secret: &[u8], direction: ProofDirection, received: &[u8]) -> bool {
        let expected = self.proof(secret, direction);
        received.len() == PROOF_BYTES && bool::from(expected.as_slice().ct_eq(received))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript<'a>(binding: &'a [u8]) -> HandshakeTranscript<'a> {
        HandshakeTranscript {
            job_id: "job-a",
            generation: 3,
            acceptor_rank: 1,
            connector_rank: 0,
            world_size: 3,
            connector_nonce: &[7; 32],
            acceptor_nonce: &[9; 32],
            channel_binding: binding,
        }
    }

    #[test]
    fn a_proof_verifies_only_for_its_secret_direction_and_transcript() {
        let secret = [42u8; 32];
        let base = transcript(&[1; 32]);
        let proof = base.proof(&secret, ProofDirection::Acceptor);
        assert!(base.verify(&secret, ProofDirection::Acceptor, &proof));
        // Another secret, the other direction, a truncated proof.
        assert!(!base.verify(&[43u8; 32], ProofDirection::Acceptor, &proof));
        assert!(!base.verify(&secret, ProofDirection::Connector, &proof));
        assert!(!base.verify(&secret, ProofDirection::Acceptor, &proof[..31]));
        assert!(!base.verify(&secret, ProofDirection::Acceptor, &[]));
        // Every field is covered.
        let variants = [
            HandshakeTranscript {
                job_id: "job-b",
                ..base
            },
            HandshakeTranscript {
                generation: 4,
                ..base
            },
            HandshakeTranscript {
                acceptor_rank: 2,
                ..base
            },
            HandshakeTranscript {
                connector_rank: 1,
                ..base
            },
            HandshakeTranscript {
                world_size: 4,
                ..base
            },
            HandshakeTranscript {
                connector_nonce: &[8; 32],
                ..base
            },
            HandshakeTranscript {
                acceptor_nonce: &[8; 32],
                ..base
            },
        ];
        for (index, variant) in variants.iter().enumerate() {
            assert!(
                !variant.verify(&secret, ProofDirection::Acceptor, &proof),
                "variant {index} verified"
            );
        }
    }

    #[test]
    fn a_proof_made_for_one_tls_session_is_refused_on_another() {
        let secret = [5u8; 32];
        let relayed_session = transcript(&[0xaa; 32]);
        let victim_session = transcript(&[0xbb; 32]);
        for direction in [ProofDirection::Acceptor, ProofDirection::Connector] {
            let proof = relayed_session.proof(&secret, direction);
            assert!(relayed_session.verify(&secret, direction, &proof));
            assert!(!victim_session.verify(&secret, direction, &proof));
        }
        // A proof made without TLS is not valid inside one either.
        let plain = transcript(&[]).proof(&secret, ProofDirection::Connector);
        assert!(!victim_session.verify(&secret, ProofDirection::Connector, &plain));
    }

    #[test]
    fn fields_are_length_prefixed_so_boundaries_cannot_shift() {
        let secret = [1u8; 32];
        // The same concatenated bytes split differently between the two nonces.
        let first = HandshakeTranscript {
            connector_nonce: b"abcdefghijklmnopq",
            acceptor_nonce: b"rstuvwxyz0123456",
            ..transcript(&[])
        };
        let second = HandshakeTranscript {
            connector_nonce: b"abcdefghijklmnop",
            acceptor_nonce: b"qrstuvwxyz0123456",
            ..transcript(&[])
        };
        assert_ne!(
            first.proof(&secret, ProofDirection::Acceptor),
            second.proof(&secret, ProofDirection::Acceptor)
        );
    }

    #[test]
    fn the_secret_is_not_printed_and_short_secrets_are_refused() {
        let security = RingSecurity::new(vec![0x5a; 32], true);
        let printed = format!("{security:?}");
        assert!(printed.contains("secret_bytes: 32"), "{printed}");
        assert!(!printed.contains("90"), "{printed}");
        assert_eq!(security.problem(), None);
        assert_eq!(RingSecurity::unauthenticated().problem(), None);
        assert!(
            RingSecurity::new(vec![1; 8], false)
                .problem()
                .expect("too short")
                .contains("8 bytes")
        );
    }
}
