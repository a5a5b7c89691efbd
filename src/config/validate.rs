//! Validation: the raw file mirror in, a [`Config`] the daemon can trust out — or every
//! problem in the file, each with its position and what was expected.
//!
//! Validation never stops at the first problem: each check records its error in a
//! [`Ctx`] and carries on, so `maitred check` shows a user all their mistakes in one
//! run. Section checks live in `validate/pool.rs` and `validate/listener.rs`, single
//! value parsers in `validate/values.rs`; this file holds the shared context, the
//! `[server]` and `[admin]` sections and the order of the whole pass.

mod discovery;
mod listener;
mod pool;
mod values;

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::diagnostics::{ConfigError, ConfigErrors, line_column};
use super::raw::{RawAdmin, RawConfig, RawServer};
use super::types::{AccessLogTarget, AdminConfig, Config, LogFormat, ServerConfig};

/// Validates a parsed file. `source` is the text it came from (for positions), `file`
/// names it in errors, `base_dir` anchors relative paths.
pub fn validate(
    raw: RawConfig,
    source: &str,
    file: &str,
    base_dir: &Path,
) -> Result<Config, ConfigErrors> {
    let mut ctx = Ctx {
        file,
        source,
        base_dir,
        errors: Vec::new(),
    };

    let server = server(&mut ctx, raw.server.as_ref());
    let admin = match &raw.admin {
        None => Some(None),
        Some(a) => admin(&mut ctx, a).map(Some),
    };

    // Pool names come from the raw file, so a reference to a pool that exists but has
    // its own errors is not reported a second time as unknown.
    let pool_names: Vec<&str> = raw.pool.keys().map(|k| k.get_ref().as_str()).collect();
    let listeners = every(
        raw.listener
            .iter()
            .map(|l| listener::listener(&mut ctx, l, &pool_names)),
    );
    listener::check_unique(&mut ctx, &raw.listener, raw.admin.as_ref());

    let used = used_pools(&raw);
    // A BTreeMap iterates in key order, so pools come out sorted by name.
    let pools =
        every(raw.pool.iter().map(|(name, p)| {
            pool::pool(&mut ctx, name, p, used.contains(name.get_ref().as_str()))
        }));

    let config = match (server, admin, listeners, pools) {
        (Some(server), Some(admin), Some(listeners), Some(pools)) => Some(Config {
            server,
            admin,
            listeners,
            pools,
        }),
        _ => None,
    };
    ctx.finish(config)
}

/// Every item of `items` checked (each records its own errors), then all of them or
/// nothing. Unlike collecting into `Option<Vec<_>>`, which stops at the first failure,
/// this runs every check so that every error is reported.
pub(super) fn every<T>(items: impl Iterator<Item = Option<T>>) -> Option<Vec<T>> {
    let all: Vec<Option<T>> = items.collect();
    all.into_iter().collect()
}

/// Names of the pools some listener or route sends traffic to.
fn used_pools(raw: &RawConfig) -> BTreeSet<&str> {
    raw.listener
        .iter()
        .flat_map(|l| {
            std::iter::once(l.pool.get_ref().as_str())
                .chain(l.route.iter().map(|r| r.get_ref().pool.get_ref().as_str()))
        })
        .collect()
}

/// The most worker threads `server.threads` may ask for.
pub const MAX_THREADS: u32 = 1024;

/// `[server]`; every key optional.
fn server(ctx: &mut Ctx<'_>, raw: Option<&RawServer>) -> Option<ServerConfig> {
    let defaults = ServerConfig::default();
    let Some(raw) = raw else {
        return Some(defaults);
    };
    let threads = ctx.int("threads", raw.threads.as_ref(), 0, 0, MAX_THREADS);
    let grace_period = match &raw.grace_period {
        None => Some(defaults.grace_period),
        Some(v) => ctx.parse(v, |s| values::duration("grace_period", s)),
    };
    let log_level = match &raw.log_level {
        None => Some(defaults.log_level),
        Some(v) => ctx.parse(v, log_level),
    };
    let access_log = match &raw.access_log {
        None => Some(defaults.access_log),
        Some(v) => {
            let base_dir = ctx.base_dir;
            ctx.parse(v, |s| access_log(s, base_dir))
        }
    };
    let log_format = match &raw.log_format {
        None => Some(defaults.log_format),
        Some(v) => ctx.parse(v, log_format),
    };
    Some(ServerConfig {
        threads: usize::try_from(threads?).ok()?,
        grace_period: grace_period?,
        log_level: log_level?,
        access_log: access_log?,
        log_format: log_format?,
    })
}

/// `server.log_format`: `text` or `json`.
fn log_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!(
            "unknown log_format {other:?}; expected \"text\" or \"json\""
        )),
    }
}

/// `server.log_level`: a tracing filter such as `info` or `maitred=debug,hyper=warn`.
fn log_level(text: &str) -> Result<String, String> {
    let expected = "expected trace, debug, info, warn, error, off or a tracing filter like \"maitred=debug,info\"";
    if text.trim().is_empty() {
        return Err(format!("empty log_level; {expected}"));
    }
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_string())
        .map_err(|e| format!("invalid log_level {text:?} ({e}); {expected}"))
}

/// `server.access_log`: `off`, `stdout` or a file path relative to the config file.
fn access_log(text: &str, base_dir: &Path) -> Result<AccessLogTarget, String> {
    match text {
        "off" => Ok(AccessLogTarget::Off),
        "stdout" => Ok(AccessLogTarget::Stdout),
        "" => Err("empty access_log; expected \"off\", \"stdout\" or a file path".to_string()),
        path => Ok(AccessLogTarget::File(base_dir.join(path))),
    }
}

/// `[admin]`: a token is required unless only this machine can reach the listener.
fn admin(ctx: &mut Ctx<'_>, raw: &RawAdmin) -> Option<AdminConfig> {
    let bind = ctx.parse(&raw.bind, values::bind_addr)?;
    let token = match &raw.token {
        Some(t) if t.get_ref().is_empty() => {
            ctx.error(
                t.span(),
                "empty admin token; remove the key or set a long random string".to_string(),
            );
            return None;
        }
        Some(t) => Some(t.get_ref().clone()),
        None => None,
    };
    if token.is_none() && !bind.ip().is_loopback() {
        ctx.error(
            raw.bind.span(),
            format!("admin bind {bind} is not a loopback address, so a token is required; add token = \"...\" to [admin]"),
        );
        return None;
    }
    let allowed_hosts = every(
        raw.allowed_hosts
            .iter()
            .flatten()
            .map(|h| ctx.parse(h, values::allowed_host)),
    )?;
    Some(AdminConfig {
        bind,
        token,
        allowed_hosts,
    })
}

/// What every check needs: where the text came from and the errors found so far.
pub(super) struct Ctx<'a> {
    file: &'a str,
    source: &'a str,
    base_dir: &'a Path,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    /// Records a problem at `span`.
    fn error(&mut self, span: Range<usize>, message: String) {
        let e = ConfigError::at(self.file, self.source, span, message);
        self.errors.push(e);
    }

    /// The 1-based line where `span` starts, to name an earlier occurrence in a message.
    fn line(&self, span: Range<usize>) -> usize {
        line_column(self.source, span.start).0
    }

    /// Runs a value parser on spanned text, recording its error at the value.
    fn parse<T>(
        &mut self,
        v: &Spanned<String>,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        f(v.get_ref()).map_err(|m| self.error(v.span(), m)).ok()
    }

    /// An optional value parsed by `f`, or `default` when absent.
    fn parse_or<T>(
        &mut self,
        v: Option<&Spanned<String>>,
        default: T,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match v {
            None => Some(default),
            Some(v) => self.parse(v, f),
        }
    }

    /// An optional duration that must be greater than zero.
    fn duration(
        &mut self,
        key: &str,
        v: Option<&Spanned<String>>,
        default: Duration,
    ) -> Option<Duration> {
        self.parse_or(v, default, |s| values::positive_duration(key, s))
    }

    /// An optional integer within `min..=max`, or `default` when absent.
    fn int(
        &mut self,
        key: &str,
        v: Option<&Spanned<i64>>,
        default: u32,
        min: u32,
        max: u32,
    ) -> Option<u32> {
        let Some(v) = v else {
            return Some(default);
        };
        let n = *v.get_ref();
        if let Ok(n) = u32::try_from(n) {
            if (min..=max).contains(&n) {
                return Some(n);
            }
        }
        let message = if max == u32::MAX {
            format!("{key} must be at least {min}, got {n}")
        } else {
            format!("{key} must be between {min} and {max}, got {n}")
        };
        self.error(v.span(), message);
        None
    }

    /// The collected errors sorted by position, or the config when there are none.
    fn finish(mut self, config: Option<Config>) -> Result<Config, ConfigErrors> {
        if self.errors.is_empty() {
            if let Some(config) = config {
                return Ok(config);
            }
            // Every check that yields nothing records why; this guards that invariant.
            let message = "invalid configuration".to_string();
            return Err(ConfigErrors::single(ConfigError::without_position(
                self.file, message,
            )));
        }
        self.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(self.errors))
    }
}
