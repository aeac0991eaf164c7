//! The command line: `tether serve` and the admin commands (organizations, users, memberships, tokens).

use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::domain::dates::{format_ms, now_ms};
use crate::domain::{OrgId, Role};
use crate::http::ctx::hash_token;
use crate::store::{self, DynStore, Locator, Synchronous};

/// Tether, a self-hosted issue tracker with a Yandex Tracker-compatible API.
#[derive(Debug, Parser)]
#[command(name = "tether", version)]
pub struct Cli {
    /// Database: `sqlite://PATH` (embedded, the default) or `postgres://USER@HOST/DB`.
    #[arg(
        long,
        global = true,
        env = "TETHER_DATABASE_URL",
        default_value = "sqlite://tether.db"
    )]
    pub database_url: String,
    /// SQLite durability: `normal` survives a crash of Tether, `full` also survives power loss.
    #[arg(long, global = true, env = "TETHER_SQLITE_SYNCHRONOUS", value_enum, default_value_t = Synchronous::Normal)]
    pub sqlite_synchronous: Synchronous,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the HTTP server.
    Serve(Box<ServeArgs>),
    /// Organizations.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Users.
    #[command(subcommand)]
    User(UserCommand),
    /// Memberships: a role per organization.
    #[command(subcommand)]
    Member(MemberCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Migrations: import data with its history.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Write an online, consistent copy of the SQLite database to a new file.
    Backup {
        /// The file to create (must not exist).
        #[arg(long)]
        to: String,
    },
    /// Moving data between databases.
    #[command(subcommand)]
    Db(DbCommand),
}

/// `tether db …`.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy everything from one database to another, empty one (e.g. SQLite to PostgreSQL). A SQLite source is
    /// copied from a consistent snapshot, so the server may keep running.
    Copy {
        /// Source URL.
        #[arg(long)]
        from: String,
        /// Destination URL (migrated first; must hold no data).
        #[arg(long)]
        to: String,
    },
}

/// `tether import …`.
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Import links from an NDJSON file: one seed-001 record per line plus `"from": "KEY"`. Prints the refused
    /// lines as NDJSON results and a summary; exits non-zero when any line was refused.
    Links {
        /// The NDJSON file (`-` for standard input).
        file: String,
        /// Organization id.
        #[arg(long)]
        org: String,
    },
}

/// `tether serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "TETHER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Public base URL used in every `self` URL (default `http://<listen address>`).
    #[arg(long, env = "TETHER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "TETHER_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// How long the API keeps a token's user and memberships in memory (`0s` turns it off). A token revoked
    /// through another process, or a membership changed with the CLI, takes effect here within this time.
    #[arg(long, env = "TETHER_AUTH_CACHE_TTL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub auth_cache_ttl: std::time::Duration,
    /// How long the API may serve a kept answer of an issue read (an issue, its links, its graph) while nothing was
    /// written (`0s` turns it off). Every write of this server makes them stale at once; a write of another process
    /// to the same SQLite file (a CLI command) shows within this time. PostgreSQL answers are never kept.
    #[arg(long, env = "TETHER_READ_CACHE_TTL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub read_cache_ttl: std::time::Duration,
    /// Bound on the bodies of the kept answers, in bytes.
    #[arg(long, env = "TETHER_READ_CACHE_SIZE", default_value_t = 32 * 1024 * 1024)]
    pub read_cache_size: u64,
    /// Timeout of one outbox delivery attempt (`10s`, `500ms`).
    #[arg(long, env = "TETHER_OUTBOX_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub outbox_timeout: std::time::Duration,
    /// Delay before the second attempt; doubles after each failure, with jitter.
    #[arg(long, env = "TETHER_OUTBOX_BACKOFF", default_value = "1s", value_parser = humantime::parse_duration)]
    pub outbox_backoff: std::time::Duration,
    /// The longest delay between attempts.
    #[arg(long, env = "TETHER_OUTBOX_BACKOFF_MAX", default_value = "10m", value_parser = humantime::parse_duration)]
    pub outbox_backoff_max: std::time::Duration,
    /// Attempts before an event is marked failed.
    #[arg(long, env = "TETHER_OUTBOX_MAX_ATTEMPTS", default_value_t = 12)]
    pub outbox_max_attempts: u32,
    /// Sentry's base URL (SaaS or self-hosted).
    #[arg(long, env = "TETHER_SENTRY_URL", default_value = "https://sentry.io")]
    pub sentry_url: String,
    /// The Sentry app's client id.
    #[arg(long, env = "TETHER_SENTRY_CLIENT_ID", default_value = "")]
    pub sentry_client_id: String,
    /// The Sentry app's client secret; without it every Sentry route refuses (401).
    #[arg(long, env = "TETHER_SENTRY_CLIENT_SECRET", hide_env_values = true)]
    pub sentry_client_secret: Option<String>,
    /// The Sentry app's slug.
    #[arg(long, env = "TETHER_SENTRY_APP_SLUG")]
    pub sentry_app_slug: Option<String>,
    /// The Tether organization new Sentry installations map to (default: the bootstrap organization).
    #[arg(long, env = "TETHER_SENTRY_ORG_ID")]
    pub sentry_org_id: Option<String>,
    /// Close and reopen linked issues when Sentry resolves and unresolves them.
    #[arg(long, env = "TETHER_SENTRY_STATUS_SYNC", default_value_t = true, action = clap::ArgAction::Set)]
    pub sentry_status_sync: bool,
}

/// `tether org …`.
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization.
    Create {
        /// Id (`[A-Za-z0-9_-]{1,64}`), what clients send as X-Org-ID.
        #[arg(long)]
        id: String,
        /// Name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List organizations.
    List,
}

/// `tether user …`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; prints the uid.
    Create {
        /// Login.
        #[arg(long)]
        login: String,
        /// Display name.
        #[arg(long)]
        display: Option<String>,
        /// E-mail.
        #[arg(long)]
        email: Option<String>,
    },
}

/// `tether member …`.
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Grant a user a role in an organization (or change it).
    Add {
        /// Organization id.
        #[arg(long)]
        org: String,
        /// Login or uid.
        #[arg(long)]
        user: String,
        /// admin, member or reader.
        #[arg(long)]
        role: String,
    },
}

/// `tether token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for a user; prints it once (only its hash is kept).
    Create {
        /// Login or uid.
        #[arg(long)]
        user: String,
        /// A label.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this user's (login or uid).
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token by id.
    Revoke {
        /// Token id.
        id: i64,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    // A second init (tests) is harmless; ignore it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn find_user(store: &DynStore, who: &str) -> anyhow::Result<crate::store::User> {
    let loc = who
        .parse::<i64>()
        .map_or_else(|_| Locator::Key(who.to_owned()), Locator::Id);
    store.find_user(&loc).await?.with_context(|| format!("no user {who}"))
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    init_tracing();
    if let Command::Db(DbCommand::Copy { from, to }) = &cli.command {
        return copy_database(from, to, cli.sqlite_synchronous).await;
    }
    let store = store::open(&cli.database_url, cli.sqlite_synchronous)
        .await
        .context("cannot open the database")?;
    match cli.command {
        Command::Serve(args) => serve(store, *args).await,
        Command::Org(OrgCommand::Create { id, name }) => {
            let org = OrgId::parse(&id).context("an organization id is 1-64 of [A-Za-z0-9_-]")?;
            store.create_org(&org, name.as_deref().unwrap_or(&id), now_ms()).await?;
            println!("{org}");
            Ok(())
        }
        Command::Org(OrgCommand::List) => {
            for (id, name) in store.list_orgs().await? {
                println!("{id}\t{name}");
            }
            Ok(())
        }
        Command::User(UserCommand::Create { login, display, email }) => {
            if login.is_empty() || login.bytes().all(|b| b.is_ascii_digit()) {
                bail!("a login must not be empty or all digits");
            }
            let u = store
                .create_user(&login, display.as_deref().unwrap_or(&login), email.as_deref(), now_ms())
                .await?;
            println!("{}", u.uid);
            Ok(())
        }
        Command::Member(MemberCommand::Add { org, user, role }) => {
            let org = OrgId::parse(&org).context("invalid organization id")?;
            let role = Role::parse(&role).context("role is admin, member or reader")?;
            let u = find_user(&store, &user).await?;
            store.set_membership(&org, u.uid, role).await?;
            Ok(())
        }
        Command::Token(TokenCommand::Create { user, name }) => {
            let u = find_user(&store, &user).await?;
            let token = crate::new_token();
            store.create_token(u.uid, &name, &hash_token(&token), now_ms()).await?;
            println!("{token}");
            Ok(())
        }
        Command::Token(TokenCommand::List { user }) => {
            let uid = match user {
                Some(u) => Some(find_user(&store, &u).await?.uid),
                None => None,
            };
            for t in store.list_tokens(uid).await? {
                let state = t
                    .revoked_at
                    .map_or_else(|| "active".to_owned(), |r| format!("revoked {}", format_ms(r)));
                println!(
                    "{}\t{}\t{}\t{}\t{state}",
                    t.id,
                    t.login,
                    t.name,
                    format_ms(t.created_at)
                );
            }
            Ok(())
        }
        Command::Import(ImportCommand::Links { file, org }) => import_links(store, &file, &org).await,
        Command::Backup { to } => {
            if std::path::Path::new(&to).exists() {
                bail!("{to} exists already; choose a new file");
            }
            store.backup_to(&to).await?;
            eprintln!("tether: backup written to {to}");
            Ok(())
        }
        Command::Db(DbCommand::Copy { .. }) => Ok(()),
        Command::Token(TokenCommand::Revoke { id }) => {
            if !store.revoke_token(id, None, now_ms()).await? {
                bail!("no active token {id}");
            }
            Ok(())
        }
    }
}

/// First start on an empty database: an organization, an admin user and a token. Pinned by
/// `TETHER_BOOTSTRAP_ORG_ID`/`TETHER_BOOTSTRAP_TOKEN` for scripts; otherwise generated and printed once to the
/// terminal (stdout), never to the log.
async fn bootstrap(store: &DynStore) -> anyhow::Result<()> {
    let pinned_org = std::env::var("TETHER_BOOTSTRAP_ORG_ID").ok().filter(|s| !s.is_empty());
    let pinned_token = std::env::var("TETHER_BOOTSTRAP_TOKEN").ok().filter(|s| !s.is_empty());
    let org_text = pinned_org
        .clone()
        .unwrap_or_else(|| format!("org-{:08x}", rand::random::<u32>()));
    let org = OrgId::parse(&org_text).context("TETHER_BOOTSTRAP_ORG_ID must be 1-64 of [A-Za-z0-9_-]")?;
    let token = pinned_token.clone().unwrap_or_else(crate::new_token);
    if store.bootstrap(&org, &hash_token(&token), now_ms()).await? {
        tracing::info!(org.id = %org, "bootstrapped an empty database");
        if pinned_token.is_none() {
            println!("tether: created organization {org} and user admin");
            println!("tether: admin token (shown once): {token}");
            println!("tether: try  curl -H 'Authorization: OAuth {token}' -H 'X-Org-ID: {org}' <url>/v2/myself");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

async fn serve(store: DynStore, args: ServeArgs) -> anyhow::Result<()> {
    bootstrap(&store).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let base = args.public_url.clone().unwrap_or_else(|| format!("http://{local}"));
    let mut state = crate::AppState::new(store, &base);
    state.body_limit = args.body_limit;
    state.principals = crate::http::ctx::PrincipalCache::new(args.auth_cache_ttl);
    state.answers = crate::http::answers::ReadCache::new(args.read_cache_ttl, args.read_cache_size);
    let sentry_org = match &args.sentry_org_id {
        Some(o) => Some(OrgId::parse(o).context("TETHER_SENTRY_ORG_ID must be an organization id")?),
        None => None,
    };
    let sentry_cfg = crate::integrations::sentry::SentryConfig {
        base_url: args.sentry_url.clone(),
        client_id: args.sentry_client_id.clone(),
        client_secret: args
            .sentry_client_secret
            .clone()
            .filter(|s| !s.is_empty())
            .map(crate::store::Secret),
        app_slug: args.sentry_app_slug.clone(),
        org_id: sentry_org,
        status_sync: args.sentry_status_sync,
    };
    state.sentry = Some(std::sync::Arc::new(crate::integrations::sentry::Sentry::new(
        sentry_cfg,
        state.store.clone(),
        state.http.clone(),
    )));
    let cfg = crate::outbox::OutboxConfig {
        timeout: args.outbox_timeout,
        backoff: args.outbox_backoff,
        backoff_max: args.outbox_backoff_max,
        max_attempts: args.outbox_max_attempts.max(1),
        ..Default::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = crate::outbox::Worker::new(state.store.clone(), state.http.clone(), cfg, state.wakeup.clone())
        .with_sentry(state.sentry.clone());
    let worker = tokio::spawn(worker.run(async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|stop| *stop).await;
    }));
    tracing::info!(listen = %local, public_url = %base, "serving");
    println!("tether: listening on http://{local}");
    crate::serve(listener, state, shutdown_signal()).await?;
    let _ = stop_tx.send(true);
    let _ = worker.await;
    Ok(())
}

async fn import_links(store: DynStore, file: &str, org: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncBufRead;
    let org = OrgId::parse(org).context("invalid organization id")?;
    let state = crate::AppState::new(store, "http://localhost");
    let (input, size): (Box<dyn AsyncBufRead + Unpin + Send>, u64) = if file == "-" {
        (Box::new(tokio::io::BufReader::new(tokio::io::stdin())), 0)
    } else {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("cannot open {file}"))?;
        let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        (Box::new(tokio::io::BufReader::with_capacity(256 * 1024, f)), size)
    };
    let bar = if size > 0 {
        indicatif::ProgressBar::new(size)
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let input = bar.wrap_async_read(input);
    let (tx, mut rx) = tokio::sync::mpsc::channel(crate::http::bulk::BATCH);
    let printer = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            while let Some(o) = rx.recv().await {
                let o: crate::http::bulk::Outcome = o;
                if o.status == 200 {
                    ok += 1;
                } else {
                    failed += 1;
                    bar.suspend(|| print!("{}", o.to_line()));
                }
                if (ok + failed) % 1000 == 0 {
                    bar.set_message(format!("{ok} imported, {failed} refused"));
                }
            }
        })
    };
    let sum = crate::http::bulk::run(&state, &org, tokio::io::BufReader::new(input), tx).await;
    let _ = printer.await;
    bar.finish_and_clear();
    eprintln!("tether: {} links imported, {} refused", sum.imported, sum.failed);
    if sum.failed > 0 {
        bail!("{} records were refused", sum.failed);
    }
    Ok(())
}

async fn copy_database(from: &str, to: &str, sync: Synchronous) -> anyhow::Result<()> {
    let source = store::open(from, sync)
        .await
        .context("cannot open the source database")?;
    // A SQLite source is read from a snapshot taken in one transaction, so writes going on meanwhile cannot
    // leave the copy half-written.
    let snapshot_dir = tempfile::tempdir()?;
    let source = if source.backend() == "sqlite" {
        let path = snapshot_dir.path().join("snapshot.db");
        let path = path.to_str().context("temporary path is not UTF-8")?.to_owned();
        source.backup_to(&path).await?;
        store::open(&format!("sqlite://{path}"), sync).await?
    } else {
        source
    };
    let dest = store::open(to, sync)
        .await
        .context("cannot open the destination database")?;
    if !dest.list_orgs().await?.is_empty() {
        bail!("the destination database holds data already; copy into an empty one");
    }
    // The destination's own first start may have written nothing but its migrations; `meta` is copied over.
    for table in crate::store::copy::TABLES {
        let mut offset = 0;
        loop {
            let rows = source.export_rows(table, offset, 1000).await?;
            if rows.is_empty() {
                break;
            }
            dest.import_rows(table, &rows)
                .await
                .with_context(|| format!("copying {}", table.name))?;
            offset += rows.len() as i64;
        }
        eprintln!("tether: {:<22} {offset} rows", table.name);
    }
    dest.finish_copy().await?;
    eprintln!("tether: copy finished");
    Ok(())
}
