//! The raw rates of the signing primitives on one core, for `bench/run`: what `/sign`
//! cannot beat. Ed25519 with aws-lc (what Signet signs with) and with ed25519-dalek,
//! RSA-2048 PKCS#1 v1.5 signing, and RSA-2048 key generation (what a rotation costs).
//! Prints `name rate unit` lines; asserts nothing.
//!
//! Usage: crypto_rates [SECONDS per measurement, default 2]

#[cfg(feature = "ssr")]
#[path = "shared/rate.rs"]
mod rate;

#[cfg(feature = "ssr")]
fn main() {
    use signet::domain::{Algorithm, RsaBits};
    use signet::server::crypto::{Signer, generate};
    use std::time::{Duration, Instant};

    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let budget = Duration::from_secs_f64(seconds);
    let rate = |f: &mut dyn FnMut()| rate::per_second(budget, f);
    // A token-sized message: header and claims as /sign encodes them.
    let message = [b'a'; 180];

    let ed = generate(Algorithm::EdDSA, RsaBits::B2048).expect("key");
    let signer = Signer::parse(Algorithm::EdDSA, &ed.private).expect("signer");
    let aws = rate(&mut || {
        signer.sign(&message).expect("signs");
    });
    println!("ed25519_aws_lc {aws:.0} signs/s");
    let seed: [u8; 32] = ed.private.as_bytes().try_into().expect("a seed");
    let dalek = ed25519_dalek::SigningKey::from_bytes(&seed);
    let dalek_rate = rate(&mut || {
        use ed25519_dalek::Signer as _;
        std::hint::black_box(dalek.sign(&message));
    });
    println!("ed25519_dalek {dalek_rate:.0} signs/s");

    let rsa = generate(Algorithm::RS256, RsaBits::B2048).expect("key");
    let signer = Signer::parse(Algorithm::RS256, &rsa.private).expect("signer");
    let rsa_rate = rate(&mut || {
        signer.sign(&message).expect("signs");
    });
    println!("rsa2048_sign {rsa_rate:.0} signs/s");

    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < budget || n < 3 {
        generate(Algorithm::RS256, RsaBits::B2048).expect("key");
        n += 1;
    }
    let per_key = start.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
    println!("rsa2048_generate {per_key:.0} ms/key");
}

#[cfg(not(feature = "ssr"))]
fn main() {}
