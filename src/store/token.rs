//! Account tokens: credentials that open `/v1` and the console for one account only, so an
//! application can hand each of its customers their own webhook page.
//!
//! A token reads `wht_<id>_<secret>`. The id names the record, so checking a token is one lookup
//! and one constant-time comparison, never a scan; the secret is 256 random bits and only its
//! SHA-256 is stored, so a copy of the store opens nothing. A slow password hash would add
//! nothing: there is no low-entropy secret to guess. The record is decided entirely by the
//! instance that issues it (id, hash, time), so issuing and revoking are plain changes
//! ([`Change::IssueToken`], [`Change::RevokeToken`]) that the registry log carries to every
//! instance as it carries webhooks: a token issued through one instance opens all of them, and a
//! revoke through any closes it everywhere. The log, like the store, holds only the hash.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::webhook::random_id;
use super::{decode, encode, Applied, Change, Store, StoreError};

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

/// Refuses a record no instance should store: one for no account, or with an overlong name.
fn validate(token: &AccountToken) -> Result<(), StoreError> {
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
    Ok(())
}

impl Change {
    /// The change that issues `record`, validated, so an invalid token never reaches the log.
    pub fn issue_token(record: AccountToken) -> Result<Change, StoreError> {
        validate(&record)?;
        Ok(Change::IssueToken { token: record })
    }
}

impl Store {
    /// Applies [`Change::IssueToken`]: stores the record as given, unless its id exists.
    pub(super) fn issue_token(&self, token: &AccountToken) -> Result<Applied, StoreError> {
        validate(token)?;
        let stored = self.tokens.compare_and_swap(
            token.id.as_bytes(),
            None::<&[u8]>,
            Some(encode(token)?),
        )?;
        Ok(match stored {
            Ok(()) => Applied::Issued,
            Err(_) => Applied::Conflict,
        })
    }

    /// Applies [`Change::RevokeToken`].
    pub(super) fn revoke_token(&self, id: &str) -> Result<Applied, StoreError> {
        Ok(match self.tokens.remove(id.as_bytes())? {
            Some(_) => Applied::Deleted,
            None => Applied::Missing,
        })
    }

    /// Every token record, in id order.
    pub fn tokens(&self) -> Result<Vec<AccountToken>, StoreError> {
        self.tokens
            .iter()
            .map(|entry| decode::<AccountToken>(&entry?.1))
            .collect()
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

    fn issued(account_id: u64) -> IssuedToken {
        IssuedToken::generate(
            account_id,
            Some("portal".into()),
            "2026-01-01T00:00:00Z".into(),
        )
    }

    #[test]
    fn a_token_opens_its_account_until_revoked_and_only_its_hash_is_stored() {
        let store = Store::open_temporary().unwrap();
        let issued = issued(7);
        let change = Change::issue_token(issued.record.clone()).unwrap();
        assert_eq!(store.apply(&change).unwrap(), Applied::Issued);
        assert_eq!(store.token_account(&issued.token).unwrap(), Some(7));
        let listed = store.tokens().unwrap();
        assert_eq!(listed, vec![issued.record.clone()]);
        let secret = &issued.token[issued.token.len() - 64..];
        for written in [
            serde_json::to_string(&listed).unwrap(),
            serde_json::to_string(&change).unwrap(),
        ] {
            assert!(!written.contains(secret), "{written}");
        }

        let mut wrong = issued.token.clone();
        wrong.push('x');
        assert_eq!(store.token_account(&wrong).unwrap(), None);
        assert_eq!(store.token_account("wht_tok_nope_abc").unwrap(), None);
        assert_eq!(store.token_account("not a token").unwrap(), None);

        let revoke = Change::RevokeToken {
            id: issued.record.id.clone(),
        };
        assert_eq!(store.apply(&revoke).unwrap(), Applied::Deleted);
        assert_eq!(store.apply(&revoke).unwrap(), Applied::Missing);
        assert_eq!(store.token_account(&issued.token).unwrap(), None);
    }

    #[test]
    fn token_changes_applied_again_leave_the_store_as_once() {
        let store = Store::open_temporary().unwrap();
        let kept = issued(7);
        let revoked = issued(8);
        let changes = [
            Change::issue_token(kept.record.clone()).unwrap(),
            Change::issue_token(revoked.record.clone()).unwrap(),
            Change::RevokeToken {
                id: revoked.record.id.clone(),
            },
        ];
        for change in &changes {
            store.apply(change).unwrap();
        }
        // An instance that crashed before recording its position reads them again.
        let again: Vec<Applied> = changes.iter().map(|c| store.apply(c).unwrap()).collect();
        assert_eq!(
            again,
            [Applied::Conflict, Applied::Issued, Applied::Deleted]
        );
        assert_eq!(store.tokens().unwrap(), vec![kept.record.clone()]);
        assert_eq!(store.token_account(&kept.token).unwrap(), Some(7));
        assert_eq!(store.token_account(&revoked.token).unwrap(), None);
    }

    #[test]
    fn a_token_for_no_account_is_refused_before_the_log_and_when_applied() {
        let store = Store::open_temporary().unwrap();
        let issued = issued(0);
        let invalid = |result: Result<_, StoreError>| {
            matches!(
                result,
                Err(StoreError::Invalid {
                    field: "account_id",
                    ..
                })
            )
        };
        assert!(invalid(
            Change::issue_token(issued.record.clone()).map(drop)
        ));
        let change = Change::IssueToken {
            token: issued.record,
        };
        assert!(invalid(store.apply(&change).map(drop)));
        assert!(store.tokens().unwrap().is_empty());
    }
}
