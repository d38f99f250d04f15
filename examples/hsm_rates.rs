//! The signing rates of a PKCS#11 token on one core, for `bench/hsm`: the raw `C_Sign`
//! rate of the module on one session with a known handle (what `/sign` cannot beat), and
//! the rate of Signet's own token path (`Token::sign`: a pooled session, the cached
//! handle, the ES256 digest). Keys are generated on the token for the run and destroyed
//! after. Prints `name rate unit` lines; asserts nothing.
//!
//! Usage: SOFTHSM2_CONF=... hsm_rates MODULE TOKEN_LABEL PIN [SECONDS, default 2]

#[cfg(feature = "ssr")]
#[path = "shared/rate.rs"]
mod rate;

#[cfg(feature = "ssr")]
fn main() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    use signet::domain::{Algorithm, RsaBits};
    use signet::server::crypto::pkcs11::{Pin, Token, TokenChoice, TokenConfig};
    use std::time::Duration;

    let args: Vec<String> = std::env::args().collect();
    let [_, module, label, pin, rest @ ..] = args.as_slice() else {
        eprintln!("usage: hsm_rates MODULE TOKEN_LABEL PIN [SECONDS]");
        std::process::exit(2);
    };
    let seconds: f64 = rest.first().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let budget = Duration::from_secs_f64(seconds);
    let rate = |f: &mut dyn FnMut()| rate::per_second(budget, f);
    let config = TokenConfig {
        module: module.into(),
        token: TokenChoice::Label(label.clone()),
        pin: Pin::new(pin.clone()),
    };
    let algs = [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];
    let token = Token::open(&config, &algs, "bench").expect("token opens");
    // A token-sized message: header and claims as /sign encodes them.
    let message = [b'a'; 180];

    // The raw module, beside Signet's path: its own context, one session, one handle.
    let ctx = Pkcs11::new(module).expect("module");
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|i| i.label().trim() == label)
        })
        .expect("the token");
    let session = ctx.open_rw_session(slot).expect("session");
    let _ = session.login(
        UserType::User,
        Some(&cryptoki::types::AuthPin::new(pin.clone().into())),
    );

    for alg in algs {
        let key = token.generate(alg, RsaBits::B2048).expect("generate");
        let id = signet::server::crypto::unhex(&key.id).expect("hex");
        let handle = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(id),
            ])
            .expect("find")[0];
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &message);
        let (mechanism, data): (Mechanism, &[u8]) = match alg {
            Algorithm::EdDSA => (
                Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                &message,
            ),
            Algorithm::ES256 => (Mechanism::Ecdsa, digest.as_ref()),
            _ => (Mechanism::Sha256RsaPkcs, &message),
        };
        let raw = rate(&mut || {
            session.sign(&mechanism, handle, data).expect("C_Sign");
        });
        let ours = rate(&mut || {
            token.sign(alg, &key.id, &message).expect("Token::sign");
        });
        println!("raw_csign_{alg} {raw:.0} signs/s");
        println!("token_sign_{alg} {ours:.0} signs/s");
        token.destroy(&key.id).expect("destroy");
    }
}

#[cfg(not(feature = "ssr"))]
fn main() {}
