//! Account tokens: credentials that open `/v1` and the console for one account only, so an
//! application can hand each of its customers their own webhook page.
//!
//! A token reads `wht_<id>_<secret>`. The id names the record, so checking a token is one lookup
//! and one constant-time comparison, never a scan; the secret is 256 random bits and only its
//! SHA-256 is stored, so a copy of the store opens nothing. A slow password hash would add
//! nothing: there is no low-entropy secret to guess. The record is decided entirely by its
//! caller (id, hash, time), so creating or revoking one is a plain write that a replicated log
//! can carry as it is.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::webhook::random_id;
use super::{decode, encode, Store, StoreError};

const TOKEN_PREFIX: &str = "wht_";
const ID_PREFIX: &str = "tok_";
const MAX_NAME_CHARS: usize = 200;

/// One account token as stored: never the token itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountToken {
    pub id: String,
    pub account_id: u64,
    pub name: Option<String>,
    /// Hex SHA-256 of the token's secret part.
    pub hash: String,
    /// RFC 3339, whole seconds.
    pub created_at: String,
}

/// A token just made: the record to store, and the token, shown once.
pub struct IssuedToken {
    pub record: AccountToken,
    pub token: String,
}

impl IssuedToken {
    /// A fresh random token for `account_id`, created at `created_at`.
    pub fn generate(account_id: u64, name: Option<String>, created_at: String) -> IssuedToken {
        let id = format!("{ID_PREFIX}{}", random_id());
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let secret = hex::encode(secret);
        IssuedToken {
            token: format!("{TOKEN_PREFIX}{id}_{secret}"),
            record: AccountToken {
                id,
                account_id,
                name,
                hash: hash(&secret),
                created_at,
            },
        }
    }
}

/// The id and secret of something shaped like an account token.
fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.rsplit_once('_')?; // the secret is hex: no `_` in it
    id.starts_with(ID_PREFIX).then_some((id, secret))
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Store {
    /// Stores a token record exactly as given, and flushes.
    pub async fn add_token(&self, token: &AccountToken) -> Result<(), StoreError> {
        if token.account_id == 0 {
            return Err(StoreError::Invalid {
                field: "account_id",
                message: "must be a positive integer".into(),
            });
        }
        if token
            .name
            .as_ref()
            .is_some_and(|n| n.chars().count() > MAX_NAME_CHARS)
        {
            return Err(StoreError::Invalid {
                field: "name",
                message: format!("must be at most {MAX_NAME_CHARS} characters"),
            });
        }
        self.tokens.insert(token.id.as_bytes(), encode(token)?)?;
        self.flush().await
    }

    /// Every token record, in id order.
    pub fn tokens(&self) -> Result<Vec<AccountToken>, StoreError> {
        self.tokens
            .iter()
            .map(|entry| decode::<AccountToken>(&entry?.1))
            .collect()
    }

    /// Removes the token with `id` and flushes; `false` when there was none.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let removed = self.tokens.remove(id.as_bytes())?.is_some();
        if removed {
            self.flush().await?;
        }
        Ok(removed)
    }

    /// The account a presented token opens, if it is a live account token.
    pub fn token_account(&self, token: &str) -> Result<Option<u64>, StoreError> {
        let Some((id, secret)) = split(token) else {
            return Ok(None);
        };
        let Some(value) = self.tokens.get(id.as_bytes())? else {
            return Ok(None);
        };
        let record = decode::<AccountToken>(&value)?;
        let matches: bool = hash(secret).as_bytes().ct_eq(record.hash.as_bytes()).into();
        Ok(matches.then_some(record.account_id))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_opens_its_account_until_revoked_and_only_its_hash_is_stored() {
        let store = Store::open_temporary().unwrap();
        let issued = IssuedToken::generate(7, Some("portal".into()), "2026-01-01T00:00:00Z".into());
        store.add_token(&issued.record).await.unwrap();
        assert_eq!(store.token_account(&issued.token).unwrap(), Some(7));
        let listed = store.tokens().unwrap();
        assert_eq!(listed, vec![issued.record.clone()]);
        let stored = serde_json::to_string(&listed).unwrap();
        let secret = &issued.token[issued.token.len() - 64..];
        assert!(!stored.contains(secret));

        let mut wrong = issued.token.clone();
        wrong.push('x');
        assert_eq!(store.token_account(&wrong).unwrap(), None);
        assert_eq!(store.token_account("wht_tok_nope_abc").unwrap(), None);
        assert_eq!(store.token_account("not a token").unwrap(), None);

        assert!(store.revoke_token(&issued.record.id).await.unwrap());
        assert!(!store.revoke_token(&issued.record.id).await.unwrap());
        assert_eq!(store.token_account(&issued.token).unwrap(), None);
    }

    #[tokio::test]
    async fn a_token_for_no_account_is_refused() {
        let store = Store::open_temporary().unwrap();
        let issued = IssuedToken::generate(0, None, "2026-01-01T00:00:00Z".into());
        assert!(matches!(
            store.add_token(&issued.record).await,
            Err(StoreError::Invalid {
                field: "account_id",
                ..
            })
        ));
    }
}
