//! The open connections of one listener, and which one to close when there are too many.
//!
//! A connection is in one of three phases: *idle* (no request yet, or between keep-alive
//! requests, TLS handshake included), *receiving* (a request has started but has not been
//! authenticated: headers, body, signature check), or *busy* (an authenticated request is
//! being processed). Idle and receiving connections cost a stranger nothing to hold open, so
//! they are the ones given up:
//!
//! - at `max_connections`, a new connection closes the oldest idle one (else the oldest
//!   receiving one) *of the client address holding the most such connections*; only when
//!   every connection is busy is it refused (503). Choosing the heaviest address keeps a flood
//!   from one or a few addresses cycling through its own connections, however fast it
//!   reconnects, instead of closing a real sender's connection before its request is in;
//! - one client address holds at most `max_idle_per_client` idle or receiving connections;
//!   past that, its own oldest one is closed.
//!
//! A busy connection is never closed this way: the request it serves has passed
//! authentication and may be writing to the spool. The switch to busy and the decision to
//! close are taken under one lock, so a request is either closed before it is admitted (and
//! refused) or admitted and left alone. A connection being closed first finishes an answer it
//! is writing (hyper's graceful shutdown, at most a second).
//!
//! "Address" means an IPv4 address, or an IPv6 /64 (one host usually holds a whole /64, so
//! counting /128s would let it open connections under endless addresses).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Receiving,
    Busy,
    /// Told to close; gone once its task notices.
    Closing,
}

impl Phase {
    /// Idle and receiving connections are the ones given up when room is needed.
    fn expendable(self) -> bool {
        matches!(self, Phase::Idle | Phase::Receiving)
    }
}

#[derive(Debug)]
struct Open {
    client: IpAddr,
    phase: Phase,
    /// The phase it was in when told to close.
    closed_in: Option<Phase>,
    close: CancellationToken,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    /// By id, so by age: the first entries are the oldest.
    open: BTreeMap<u64, Open>,
    /// Idle or receiving connections per client address.
    expendable_by_client: HashMap<IpAddr, usize>,
    closing: usize,
}

impl Registry {
    /// The oldest idle connection that `accept` admits, else the oldest receiving one.
    fn oldest(&self, accept: impl Fn(&Open) -> bool) -> Option<u64> {
        let pick = |phase| {
            self.open
                .iter()
                .find(|(_, o)| o.phase == phase && accept(o))
                .map(|(id, _)| *id)
        };
        pick(Phase::Idle).or_else(|| pick(Phase::Receiving))
    }

    fn set_phase(&mut self, id: u64, phase: Phase) {
        let Some(open) = self.open.get_mut(&id) else {
            return;
        };
        let (was, client) = (open.phase, open.client);
        if was == Phase::Closing || was == phase {
            return;
        }
        open.phase = phase;
        if phase == Phase::Closing {
            open.closed_in = Some(was);
            open.close.cancel();
            self.closing += 1;
        }
        match (was.expendable(), phase.expendable()) {
            (true, false) => self.uncount(client),
            (false, true) => *self.expendable_by_client.entry(client).or_default() += 1,
            _ => {}
        }
    }

    fn uncount(&mut self, client: IpAddr) {
        if let Some(n) = self.expendable_by_client.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                self.expendable_by_client.remove(&client);
            }
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(open) = self.open.remove(&id) {
            if open.phase.expendable() {
                self.uncount(open.client);
            }
            if open.phase == Phase::Closing {
                self.closing -= 1;
            }
        }
    }
}

/// The address connections are counted by: IPv4 as it is, IPv6 by its /64.
fn address_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            // (A v4-mapped peer was made IPv4 where the listener accepted it.)
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
    }
}

/// What making room for a new connection cost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Evicted {
    /// An idle or receiving connection was closed because the listener was at its cap.
    pub at_capacity: bool,
    /// The client's own oldest idle or receiving connection was closed.
    pub client_limit: bool,
}

/// Every connection is busy with an authenticated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// The open connections of one listener.
#[derive(Debug)]
pub(crate) struct Connections {
    max: usize,
    max_idle_per_client: usize,
    registry: Mutex<Registry>,
    /// Notified when a connection leaves.
    gone: tokio::sync::Notify,
}

impl Connections {
    pub(crate) fn new(max: usize, max_idle_per_client: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max,
            max_idle_per_client,
            registry: Mutex::default(),
            gone: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets a connection from `client` in, closing an expendable one when room is needed.
    pub(crate) fn open(self: &Arc<Self>, client: IpAddr) -> Result<(Connection, Evicted), Full> {
        let client = address_of(client);
        let mut r = self.lock();
        let mut evicted = Evicted::default();
        // Connections told to close are gone within moments, so they do not count here;
        // [`Connections::wait_for_room`] keeps them from piling up.
        if r.open.len() - r.closing >= self.max {
            let heaviest = r.expendable_by_client.values().copied().max().ok_or(Full)?;
            let by_client = &r.expendable_by_client;
            let id = r
                .oldest(|o| by_client.get(&o.client) == Some(&heaviest))
                .ok_or(Full)?;
            r.set_phase(id, Phase::Closing);
            evicted.at_capacity = true;
        }
        if r.expendable_by_client.get(&client).copied().unwrap_or(0) >= self.max_idle_per_client {
            if let Some(id) = r.oldest(|o| o.client == client) {
                r.set_phase(id, Phase::Closing);
                evicted.client_limit = true;
            }
        }
        let id = r.next_id;
        r.next_id += 1;
        let close = CancellationToken::new();
        r.open.insert(
            id,
            Open {
                client,
                phase: Phase::Idle,
                closed_in: None,
                close: close.clone(),
            },
        );
        *r.expendable_by_client.entry(client).or_default() += 1;
        let state = ConnectionState {
            id,
            connections: self.clone(),
        };
        Ok((Connection { state, close }, evicted))
    }

    /// Waits while the connections being closed have not gone yet and the listener holds
    /// twice its cap: the next connection then waits in the kernel's backlog instead of
    /// closing yet another one (a fast reconnect loop could otherwise outrun the closing).
    pub(crate) async fn wait_for_room(&self) {
        while self.lock().open.len() >= 2 * self.max {
            let gone = self.gone.notified();
            let _ = tokio::time::timeout(std::time::Duration::from_millis(10), gone).await;
        }
    }

    /// Open connections, those being closed included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().open.len()
    }
}

/// One open connection, owned by its task: it leaves the registry when dropped.
#[derive(Debug)]
pub(crate) struct Connection {
    state: ConnectionState,
    close: CancellationToken,
}

impl Connection {
    /// Cancelled when the connection is to be closed to make room.
    pub(crate) fn closed(&self) -> &CancellationToken {
        &self.close
    }

    /// Whether it was told to close while a request on it was still unauthenticated: then
    /// there is no answer to finish, and it can be dropped at once.
    pub(crate) fn closed_mid_request(&self) -> bool {
        let r = self.state.connections.lock();
        r.open
            .get(&self.state.id)
            .is_some_and(|o| o.closed_in == Some(Phase::Receiving))
    }

    /// The handle requests on this connection carry (in their extensions).
    pub(crate) fn state(&self) -> ConnectionState {
        self.state.clone()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.state.connections.lock().remove(self.state.id);
        self.state.connections.gone.notify_waiters();
    }
}

/// A request's view of its connection, found in the request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionState {
    id: u64,
    connections: Arc<Connections>,
}

impl ConnectionState {
    /// A request has started on the connection.
    pub(crate) fn receiving(&self) {
        self.connections.lock().set_phase(self.id, Phase::Receiving);
    }

    /// The request was answered; the connection waits for the next one.
    pub(crate) fn idle(&self) {
        self.connections.lock().set_phase(self.id, Phase::Idle);
    }

    /// The request was authenticated: from now on the connection is not closed to make room.
    /// False when it is already being closed (the request must then be refused).
    pub(crate) fn busy(&self) -> bool {
        let mut r = self.connections.lock();
        let closing = r
            .open
            .get(&self.id)
            .is_none_or(|o| o.phase == Phase::Closing);
        if !closing {
            r.set_phase(self.id, Phase::Busy);
        }
        !closing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let c = Connections::new(3, 10);
        let (a, _) = c.open(ip(1)).unwrap();
        let (b, _) = c.open(ip(2)).unwrap();
        let (d, _) = c.open(ip(3)).unwrap();
        a.state().receiving();
        assert!(a.state().busy());
        b.state().receiving();
        // `a` is busy and `b` receiving: `d`, idle, goes first although it is newer.
        let (e, evicted) = c.open(ip(4)).unwrap();
        assert!(evicted.at_capacity);
        assert!(d.closed().is_cancelled() && !b.closed().is_cancelled());
        assert!(
            !d.closed_mid_request(),
            "idle: an answer may be being written"
        );
        drop(d);
        e.state().receiving();
        assert!(e.state().busy());
        // Then the oldest receiving one; a request on a closing connection is refused.
        let (_f, _) = c.open(ip(5)).unwrap();
        assert!(b.closed().is_cancelled() && !a.closed().is_cancelled());
        assert!(b.closed_mid_request(), "nothing to finish: dropped at once");
        assert!(!b.state().busy());
    }

    #[test]
    fn at_the_cap_the_heaviest_client_gives_up_a_connection() {
        let c = Connections::new(4, 10);
        let (light, _) = c.open(ip(1)).unwrap();
        let heavy: Vec<_> = (0..3).map(|_| c.open(ip(2)).unwrap().0).collect();
        // The light client's connection is the oldest, yet the heavy client pays, whoever
        // comes in: another light client, or the heavy one reconnecting.
        let (_newcomer, evicted) = c.open(ip(3)).unwrap();
        assert!(evicted.at_capacity);
        assert!(heavy[0].closed().is_cancelled() && !light.closed().is_cancelled());
        let (_again, _) = c.open(ip(2)).unwrap();
        assert!(heavy[1].closed().is_cancelled() && !light.closed().is_cancelled());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let c = Connections::new(100, 2);
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        let (a, _) = c.open(v6(1)).unwrap();
        let (_b, _) = c.open(v6(2)).unwrap();
        let (_c, evicted) = c.open(v6(3)).unwrap();
        assert!(evicted.client_limit && a.closed().is_cancelled());
    }

    #[test]
    fn a_full_house_of_busy_connections_refuses() {
        let c = Connections::new(2, 10);
        let held: Vec<_> = (0..2).map(|i| c.open(ip(i)).unwrap().0).collect();
        for h in &held {
            h.state().receiving();
            assert!(h.state().busy());
        }
        assert_eq!(c.open(ip(9)).unwrap_err(), Full);
        held[0].state().idle();
        assert!(c.open(ip(9)).is_ok());
    }

    #[test]
    fn one_client_cannot_hold_more_than_its_share_of_idle_connections() {
        let c = Connections::new(100, 2);
        let (a, _) = c.open(ip(1)).unwrap();
        let (b, _) = c.open(ip(1)).unwrap();
        let (other, _) = c.open(ip(2)).unwrap();
        let (_third, evicted) = c.open(ip(1)).unwrap();
        assert!(evicted.client_limit && !evicted.at_capacity);
        assert!(a.closed().is_cancelled());
        assert!(!b.closed().is_cancelled() && !other.closed().is_cancelled());
        // A busy connection does not count against the client's share.
        b.state().receiving();
        assert!(b.state().busy());
        let (_fourth, evicted) = c.open(ip(1)).unwrap();
        assert!(!evicted.client_limit);
        drop(a);
        assert_eq!(c.len(), 4);
    }
}
