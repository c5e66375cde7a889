//! NATS JWTs (nats-jwt v2) and `.creds` files: encoding, signing, decoding
//! and verification. Nothing here knows about fleets; `creds` decides what
//! the claims say.
//!
//! A JWT is `header.payload.signature`, each base64url without padding; the
//! header is `{"typ":"JWT","alg":"ed25519-nkey"}` and the signature is the
//! issuer's ed25519 signature over `header.payload`. `iss` names the
//! issuer's public nkey, and `jti` is, as in nats-jwt v2 (`ClaimsData.hash`),
//! base32 without padding of SHA-512/256 over the JSON claims without `jti`.

use anyhow::{Context, Result, bail, ensure};
use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512_256};

/// The only header nats-server accepts for v2 JWTs.
const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// Signs `claims` (a JSON object without `iss`, `iat` or `jti`) as `issuer`,
/// issued at `iat` (Unix seconds). Returns the encoded JWT.
pub fn encode(claims: &Value, issuer: &nkeys::KeyPair, iat: u64) -> Result<String> {
    let Value::Object(claims) = claims else {
        bail!("JWT claims must be a JSON object");
    };
    let mut claims = claims.clone();
    claims.insert("iss".into(), json!(issuer.public_key()));
    claims.insert("iat".into(), json!(iat));
    claims.remove("jti");
    let jti = jti(&claims)?;
    claims.insert("jti".into(), json!(jti));
    let payload = serde_json::to_vec(&claims).context("serialising JWT claims")?;
    let signed = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(HEADER.as_bytes()),
        BASE64URL_NOPAD.encode(&payload)
    );
    let sig = issuer
        .sign(signed.as_bytes())
        .map_err(|e| anyhow::anyhow!("signing a JWT: {e}"))?;
    Ok(format!("{signed}.{}", BASE64URL_NOPAD.encode(&sig)))
}

/// The `jti` of `claims`: base32 (no padding) of SHA-512/256 over their JSON
/// without `jti`. serde_json's map is ordered, so the id is deterministic.
pub fn jti(claims: &Map<String, Value>) -> Result<String> {
    let mut claims = claims.clone();
    claims.remove("jti");
    let bytes = serde_json::to_vec(&claims).context("serialising JWT claims")?;
    Ok(BASE32_NOPAD.encode(&Sha512_256::digest(&bytes)))
}

/// Decodes `token`, checks its header, and verifies its signature against
/// the public key its `iss` names. Returns the claims.
pub fn decode(token: &str) -> Result<Map<String, Value>> {
    let token = token.trim();
    let Some((signed, sig)) = token.rsplit_once('.') else {
        bail!("not a JWT (expected three dot-separated parts)");
    };
    let Some((header, payload)) = signed.split_once('.').filter(|(_, p)| !p.contains('.')) else {
        bail!("not a JWT (expected three dot-separated parts)");
    };
    let b64 = |part: &str, what: &str| {
        BASE64URL_NOPAD
            .decode(part.as_bytes())
            .with_context(|| format!("JWT {what} is not base64url without padding"))
    };
    let header: Value =
        serde_json::from_slice(&b64(header, "header")?).context("JWT header is not JSON")?;
    ensure!(
        header["typ"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("jwt"))
            && header["alg"] == "ed25519-nkey",
        "JWT header {header} is not a NATS v2 header"
    );
    let claims: Map<String, Value> =
        serde_json::from_slice(&b64(payload, "payload")?).context("JWT claims are not JSON")?;
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .context("JWT has no issuer (iss)")?;
    let key = nkeys::KeyPair::from_public_key(iss)
        .map_err(|e| anyhow::anyhow!("JWT issuer {iss:?} is not a public nkey: {e}"))?;
    key.verify(signed.as_bytes(), &b64(sig, "signature")?)
        .map_err(|e| anyhow::anyhow!("JWT signature does not verify against {iss}: {e}"))?;
    Ok(claims)
}

/// A `.creds` file: the user JWT and the user's nkey seed, in the layout
/// NATS clients read (`nsc` writes the same).
pub fn creds_file(user_jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// The JWT and the seed of a `.creds` file.
pub fn parse_creds(text: &str) -> Result<(String, String)> {
    let block = |begin: &str| {
        let mut lines = text.lines().map(str::trim);
        lines.find(|l| l.contains(begin))?;
        lines.find(|l| !l.is_empty()).map(str::to_string)
    };
    let jwt = block("BEGIN NATS USER JWT").context("no `BEGIN NATS USER JWT` block")?;
    let seed = block("BEGIN USER NKEY SEED").context("no `BEGIN USER NKEY SEED` block")?;
    ensure!(
        seed.starts_with("SU"),
        "the seed block holds no user nkey seed"
    );
    Ok((jwt, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Value {
        json!({"sub": "UABC", "name": "pi-1", "nats": {"type": "user", "version": 2}})
    }

    #[test]
    fn decodes_what_it_encodes_and_the_signature_verifies() {
        let account = nkeys::KeyPair::new_account();
        let token = encode(&claims(), &account, 1_700_000_000).unwrap();
        let header = token.split('.').next().unwrap();
        assert_eq!(
            BASE64URL_NOPAD.decode(header.as_bytes()).unwrap(),
            HEADER.as_bytes()
        );
        assert!(!token.contains('='), "padding in {token}");
        let got = decode(&token).unwrap();
        assert_eq!(got["iss"], account.public_key());
        assert_eq!(got["iat"], 1_700_000_000);
        assert_eq!(got["name"], "pi-1");
        assert_eq!(got["nats"]["type"], "user");
    }

    #[test]
    fn jti_is_base32_sha512_256_of_the_claims_without_jti() {
        let token = encode(&claims(), &nkeys::KeyPair::new_account(), 1).unwrap();
        let mut got = decode(&token).unwrap();
        let jti = got.remove("jti").unwrap();
        let expected = BASE32_NOPAD.encode(&Sha512_256::digest(serde_json::to_vec(&got).unwrap()));
        assert_eq!(jti, expected);
        assert_eq!(jti.as_str().unwrap().len(), 52, "256 bits in base32");
        // Content changes change the id.
        let other = encode(&json!({"sub": "UABD"}), &nkeys::KeyPair::new_account(), 1).unwrap();
        assert_ne!(decode(&other).unwrap()["jti"], jti);
    }

    #[test]
    fn a_tampered_or_foreign_token_is_refused() {
        let account = nkeys::KeyPair::new_account();
        let token = encode(&claims(), &account, 1).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let forged = BASE64URL_NOPAD.encode(br#"{"iss":"x","name":"pi-2"}"#);
        assert!(decode(&format!("{}.{forged}.{}", parts[0], parts[2])).is_err());
        // Re-pointing iss at another key breaks the signature.
        let mut c = decode(&token).unwrap();
        c.insert(
            "iss".into(),
            json!(nkeys::KeyPair::new_account().public_key()),
        );
        let payload = BASE64URL_NOPAD.encode(&serde_json::to_vec(&c).unwrap());
        assert!(decode(&format!("{}.{payload}.{}", parts[0], parts[2])).is_err());
        assert!(decode("a.b").is_err());
    }

    #[test]
    fn creds_file_round_trips() {
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().unwrap();
        let token = encode(&claims(), &nkeys::KeyPair::new_account(), 1).unwrap();
        let text = creds_file(&token, &seed);
        assert!(text.starts_with("-----BEGIN NATS USER JWT-----\n"));
        assert!(text.contains("------END NATS USER JWT------"));
        assert_eq!(parse_creds(&text).unwrap(), (token, seed));
        assert!(parse_creds("nothing here").is_err());
    }
}
