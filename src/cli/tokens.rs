//! `webhookd tokens …`: account tokens, which open `/v1` and the console for one account. They
//! go through the same [`Registry`] client as `webhooks …`: the daemon's admin API (with the
//! admin token) or, with no daemon running, the store brought up to date with the registry log
//! and written through it, so a token issued or revoked here is so on every instance.

use anyhow::bail;
use clap::Subcommand;
use http::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use super::webhooks::{ApiFailure, Registry};
use crate::config::Config;
use crate::store::AccountToken;

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue a token for one account; prints it once.
    Create {
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        account: u64,
        /// What the token is for, shown by `tokens list`.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every account token (never the tokens themselves).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (`tok_…`): it stops working at once.
    Revoke { id: String },
}

/// What `POST /v1/tokens` answers.
#[derive(Deserialize)]
struct Issued {
    token: String,
    record: AccountToken,
}

/// `webhookd tokens …`.
pub async fn tokens(config: &Config, command: TokensCommand) -> anyhow::Result<()> {
    let registry = Registry::connect(config).await?;
    match command {
        TokensCommand::Create {
            account,
            name,
            json,
        } => {
            let issued = match &registry {
                Registry::Api(api) => {
                    let body = json!({ "account_id": account, "name": name });
                    api.call::<Issued>(Method::POST, "/v1/tokens", Some(body))
                        .await?
                }
                Registry::Direct(registry) => {
                    let issued = registry.issue_token(account, name).await?;
                    Issued {
                        token: issued.token,
                        record: issued.record,
                    }
                }
            };
            if json {
                let shown = json!({ "token": issued.token, "id": issued.record.id,
                    "account_id": issued.record.account_id, "name": issued.record.name,
                    "created_at": issued.record.created_at });
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                println!("{}", line(&issued.record));
                println!("  token {}", issued.token);
                println!("the token is shown only now: hand it to the account's owner");
            }
        }
        TokensCommand::List { json } => {
            let tokens = match &registry {
                Registry::Api(api) => api.call(Method::GET, "/v1/tokens", None).await?,
                Registry::Direct(registry) => registry.store().tokens()?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                for token in &tokens {
                    println!("{}", line(token));
                }
                println!("{} token(s)", tokens.len());
            }
        }
        TokensCommand::Revoke { id } => {
            let revoked = match &registry {
                Registry::Api(api) => {
                    match api
                        .call::<Value>(Method::DELETE, &format!("/v1/tokens/{id}"), None)
                        .await
                    {
                        Ok(_) => true,
                        Err(ApiFailure::Status(http::StatusCode::NOT_FOUND, _)) => false,
                        Err(other) => return Err(other.into()),
                    }
                }
                Registry::Direct(registry) => registry.revoke_token(&id).await?,
            };
            if !revoked {
                bail!("no token with id {id}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

fn line(token: &AccountToken) -> String {
    format!(
        "{}  account {}  created {}{}",
        token.id,
        token.account_id,
        token.created_at,
        token
            .name
            .as_deref()
            .map(|n| format!("  {n:?}"))
            .unwrap_or_default()
    )
}
