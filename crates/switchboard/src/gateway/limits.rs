//! Connection limits checked at accept — per listener, per source address, and the
//! connect rate of a source address — and the logging of what they (and the
//! handshake deadlines) cut, so that a flood is told in a few lines a second instead of
//! one line per connection.
//!
//! Everything here is bounded: the table of source addresses holds an entry only while
//! the address has a connection open or has connected in the last second (an idle
//! entry is dropped when its last connection ends, or by the once-a-second sweep), and
//! the cut log holds at most [`MAX_CUT_KEYS`] (address, reason) pairs between two
//! flushes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::config::GatewayConfig;

/// Why a client connection was cut before it became a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cut {
    /// The listener holds its `max_connections`.
    ListenerFull,
    /// The listener passed its `max_connect_rate`.
    ListenerRate,
    /// The source address holds `gateway.max_connections_per_ip`.
    PerIp,
    /// The source address passed `gateway.max_connect_rate_per_ip`.
    RatePerIp,
    /// No TLS handshake, HTTP upgrade request or verdict within `handshake_timeout`.
    HandshakeTimeout,
    /// A TLS handshake or an HTTP upgrade request that failed.
    HandshakeFailed,
}

impl Cut {
    /// The limit's configuration key, the `limit` label of
    /// `switchboard_connections_refused_total`; `None` for the handshake cuts (counted
    /// as `protocol_error` connections).
    pub fn limit(self) -> Option<&'static str> {
        match self {
            Cut::ListenerFull => Some("max_connections"),
            Cut::ListenerRate => Some("max_connect_rate"),
            Cut::PerIp => Some("max_connections_per_ip"),
            Cut::RatePerIp => Some("max_connect_rate_per_ip"),
            Cut::HandshakeTimeout | Cut::HandshakeFailed => None,
        }
    }

    /// Why, for the log.
    fn why(self) -> &'static str {
        match self {
            Cut::ListenerFull => "the listener is full (its max_connections)",
            Cut::ListenerRate => {
                "too many connects per second on the listener (its max_connect_rate)"
            }
            Cut::PerIp => "too many connections from this address (gateway.max_connections_per_ip)",
            Cut::RatePerIp => {
                "too many connects per second from this address (gateway.max_connect_rate_per_ip)"
            }
            Cut::HandshakeTimeout => {
                "no complete handshake within the listener's handshake_timeout"
            }
            Cut::HandshakeFailed => "failed TLS handshake or bad HTTP upgrade request",
        }
    }
}

/// The source a per-address limit counts: the IPv4 address (an IPv4-mapped IPv6
/// address too), or the /64 network of an IPv6 address — one IPv6 host commonly holds a
/// whole /64, so counting single addresses would not limit anyone.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// What one source address has: connections open, and its connect-rate bucket.
struct Source {
    /// Connections from it open now (handshaking ones included).
    open: usize,
    /// Connects it may still make now (at most one second's worth).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
}

impl Source {
    /// Adds what the bucket earned since it was last refilled.
    fn refill(&mut self, rate: f64, now: Instant) {
        // Never backwards: callers may hold an instant taken a little earlier.
        if now > self.refilled {
            let earned = (now - self.refilled).as_secs_f64() * rate;
            self.tokens = (self.tokens + earned).min(rate);
            self.refilled = now;
        }
    }

    /// Whether the entry says nothing a fresh one would not: no connection open and a
    /// full bucket.
    fn idle(&mut self, rate: f64, now: Instant) -> bool {
        if self.open > 0 {
            return false;
        }
        self.refill(rate, now);
        self.tokens >= rate
    }
}

/// A listener's own connect rate (`max_connect_rate`): a token bucket holding one
/// second's worth, kept by its accept loop.
pub struct ConnectRate {
    /// Connects per second (0: no limit).
    rate: f64,
    /// Connects it may still accept now.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
}

impl ConnectRate {
    /// `per_second` connects a second; `None`: no limit.
    pub fn new(per_second: Option<u32>) -> Self {
        let rate = f64::from(per_second.unwrap_or(0));
        Self {
            rate,
            tokens: rate,
            refilled: Instant::now(),
        }
    }

    /// Takes one connect, or says the listener is over its rate.
    pub fn admit(&mut self, now: Instant) -> Result<(), Cut> {
        if self.rate == 0.0 {
            return Ok(());
        }
        if now > self.refilled {
            let earned = (now - self.refilled).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.rate);
            self.refilled = now;
        }
        if self.tokens < 1.0 {
            return Err(Cut::ListenerRate);
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

/// The per-source-address limits of one gateway process (all its listeners together).
pub struct PerSource {
    /// `gateway.max_connections_per_ip` (0: none).
    max_open: usize,
    /// `gateway.max_connect_rate_per_ip`, per second (0: none).
    rate: f64,
    /// `gateway.per_ip_limits_on_loopback`.
    on_loopback: bool,
    /// The sources with a connection open or a bucket not full.
    sources: Mutex<HashMap<IpAddr, Source>>,
}

impl PerSource {
    /// The limits `config` sets.
    pub fn new(config: &GatewayConfig) -> Self {
        Self {
            max_open: config.max_connections_per_ip,
            rate: f64::from(config.max_connect_rate_per_ip),
            on_loopback: config.per_ip_limits_on_loopback,
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Source>> {
        // Each update is complete before the lock is released: a poisoned table is
        // still consistent.
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `ip`: its place (held until the connection ends), none
    /// when no per-address limit applies to it, or the limit it is over.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Option<SourcePlace>, Cut> {
        if (self.max_open == 0 && self.rate == 0.0) || (ip.is_loopback() && !self.on_loopback) {
            return Ok(None);
        }
        let key = source_of(ip);
        let rate = self.rate;
        let mut sources = self.lock();
        let source = sources.entry(key).or_insert(Source {
            open: 0,
            tokens: rate,
            refilled: now,
        });
        if self.max_open > 0 && source.open >= self.max_open {
            // It has connections open, so the entry is not left idle.
            return Err(Cut::PerIp);
        }
        if rate > 0.0 {
            source.refill(rate, now);
            if source.tokens < 1.0 {
                // Left with an empty bucket: the sweep drops it once it is full again.
                return Err(Cut::RatePerIp);
            }
            source.tokens -= 1.0;
        }
        source.open += 1;
        Ok(Some(SourcePlace {
            limits: Some(self.clone()),
            key,
        }))
    }

    /// Gives back a place taken by [`PerSource::admit`] and kept with
    /// [`SourcePlace::keep`].
    pub fn release(&self, key: IpAddr) {
        let mut sources = self.lock();
        if let Some(source) = sources.get_mut(&key) {
            source.open = source.open.saturating_sub(1);
            if source.idle(self.rate, Instant::now()) {
                sources.remove(&key);
            }
        }
    }

    /// Drops the entries of sources with nothing open whose bucket is full again;
    /// returns how many entries are left.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut sources = self.lock();
        sources.retain(|_, s| !s.idle(self.rate, now));
        sources.len()
    }

    /// Source addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// A connection's place in its source address's count, given back when dropped.
pub struct SourcePlace {
    /// `None` once kept by its connection.
    limits: Option<Arc<PerSource>>,
    key: IpAddr,
}

impl SourcePlace {
    /// Hands the place over to a holder that gives it back itself, with
    /// [`PerSource::release`] and the key returned: a connection that lasts keeps only
    /// its address, not a second reference to the limits it reaches through the gateway.
    pub fn keep(mut self) -> IpAddr {
        self.limits = None;
        self.key
    }
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        if let Some(limits) = &self.limits {
            limits.release(self.key);
        }
    }
}

/// Most (address, reason) pairs the cut log tells apart between two flushes; cuts of
/// further pairs are only counted.
pub const MAX_CUT_KEYS: usize = 1024;
/// Most lines one flush of the cut log writes (the busiest pairs first).
const MAX_CUT_LINES: usize = 20;

/// Counts cuts per (source address, reason) between two flushes, so the log gets one
/// line per pair per second however many connections a flood brings.
#[derive(Default)]
pub struct CutLog {
    counts: Mutex<HashMap<(IpAddr, Cut), u64>>,
    /// Cuts of pairs beyond [`MAX_CUT_KEYS`].
    overflow: AtomicU64,
}

impl CutLog {
    /// Counts one cut of a connection from `ip`.
    pub fn note(&self, ip: IpAddr, cut: Cut) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let key = (ip.to_canonical(), cut);
        if counts.len() >= MAX_CUT_KEYS && !counts.contains_key(&key) {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *counts.entry(key).or_insert(0) += 1;
    }

    /// Logs what was counted since the last flush, and forgets it.
    pub fn flush(&self) {
        let counts = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()));
        let mut rest = self.overflow.swap(0, Ordering::Relaxed);
        let mut rest_sources = u64::from(rest > 0);
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        for (i, ((ip, cut), n)) in counts.into_iter().enumerate() {
            if i >= MAX_CUT_LINES {
                rest += n;
                rest_sources += 1;
                continue;
            }
            tracing::warn!(
                source = %ip,
                count = n,
                reason = cut.limit().unwrap_or("handshake"),
                "cut {n} connection(s) from {ip}: {}",
                cut.why()
            );
        }
        if rest > 0 {
            tracing::warn!(
                count = rest,
                "cut {rest} more connection(s) from {rest_sources} or more other source(s) (not logged one by one)"
            );
        }
    }
}

/// Lines a kind of message may write per second; the rest are counted and told in
/// one summary line by the once-a-second tick.
pub struct LogBudget {
    per_second: u32,
    used: AtomicU32,
    suppressed: AtomicU64,
}

impl LogBudget {
    /// A budget of `per_second` lines.
    pub const fn new(per_second: u32) -> Self {
        Self {
            per_second,
            used: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether one more line may be written this second (if not, it is counted).
    pub fn allow(&self) -> bool {
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_second {
            return true;
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Starts a new second: the lines not written in the last one.
    pub fn next_second(&self) -> u64 {
        self.used.store(0, Ordering::Relaxed);
        self.suppressed.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(max_open: usize, rate: u32, on_loopback: bool) -> Arc<PerSource> {
        let config = GatewayConfig {
            max_connections_per_ip: max_open,
            max_connect_rate_per_ip: rate,
            per_ip_limits_on_loopback: on_loopback,
            ..GatewayConfig::default()
        };
        Arc::new(PerSource::new(&config))
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn open_connections_per_source_are_capped_and_given_back() {
        let l = limits(2, 0, false);
        let now = Instant::now();
        let a1 = l.admit(A, now).expect("first").expect("a place");
        let _a2 = l.admit(A, now).expect("second");
        assert_eq!(l.admit(A, now).err(), Some(Cut::PerIp));
        // Another source is not affected.
        let b = l.admit(B, now).expect("other source");
        assert_eq!(l.tracked(), 2);
        drop(a1);
        assert!(l.admit(A, now).is_ok(), "a place was given back");
        drop(b);
        assert_eq!(l.tracked(), 1, "a source with nothing open is forgotten");
    }

    #[test]
    fn the_connect_rate_is_a_bucket_of_one_second() {
        let l = limits(0, 10, false);
        // Ahead of the clock the places are given back on, so that only the instants
        // given here earn connects.
        let t0 = Instant::now() + Duration::from_secs(10);
        for i in 0..10 {
            drop(
                l.admit(A, t0)
                    .unwrap_or_else(|e| panic!("connect {i}: {e:?}")),
            );
        }
        assert_eq!(l.admit(A, t0).err(), Some(Cut::RatePerIp));
        // 200 ms later, two more connects were earned.
        let t1 = t0 + Duration::from_millis(200);
        assert!(l.admit(A, t1).is_ok());
        assert!(l.admit(A, t1).is_ok());
        assert_eq!(l.admit(A, t1).err(), Some(Cut::RatePerIp));
        // The entry stays while its bucket is not full, and goes when it is.
        assert_eq!(l.sweep(t1), 1);
        assert_eq!(l.sweep(t1 + Duration::from_secs(1)), 0);
    }

    #[test]
    fn a_listener_connect_rate_is_a_bucket_of_one_second() {
        let mut off = ConnectRate::new(None);
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| off.admit(t0).is_ok()));
        let mut r = ConnectRate::new(Some(5));
        let t0 = Instant::now() + Duration::from_millis(1);
        assert_eq!((0..10).filter(|_| r.admit(t0).is_ok()).count(), 5);
        assert_eq!(r.admit(t0), Err(Cut::ListenerRate));
        let t1 = t0 + Duration::from_millis(400);
        assert_eq!((0..10).filter(|_| r.admit(t1).is_ok()).count(), 2);
    }

    #[test]
    fn loopback_is_exempt_unless_asked_and_off_means_off() {
        let lo = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
        let exempt = limits(1, 1, false);
        let now = Instant::now();
        assert!(exempt.admit(lo, now).expect("exempt").is_none());
        assert!(exempt.admit(lo, now).expect("exempt").is_none());
        let strict = limits(1, 0, true);
        let _p = strict.admit(lo, now).expect("first");
        assert_eq!(strict.admit(lo, now).err(), Some(Cut::PerIp));
        let off = limits(0, 0, true);
        assert!(off.admit(A, now).expect("no limits").is_none());
        assert_eq!(off.tracked(), 0);
    }

    #[test]
    fn ipv6_sources_are_their_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        assert_eq!(source_of(a), source_of(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(source_of(mapped), A);
    }

    #[test]
    fn the_cut_log_is_bounded() {
        let log = CutLog::default();
        for i in 0..(MAX_CUT_KEYS as u32 + 10) {
            log.note(IpAddr::V4(std::net::Ipv4Addr::from(i)), Cut::PerIp);
        }
        assert_eq!(log.counts.lock().expect("lock").len(), MAX_CUT_KEYS);
        assert_eq!(log.overflow.load(Ordering::Relaxed), 10);
        log.flush();
        assert!(log.counts.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_log_budget_counts_what_it_suppresses() {
        let b = LogBudget::new(3);
        let allowed = (0..10).filter(|_| b.allow()).count();
        assert_eq!(allowed, 3);
        assert_eq!(b.next_second(), 7);
        assert!(b.allow());
    }
}
