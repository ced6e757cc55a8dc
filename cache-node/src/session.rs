//! One client's session: what Redis keeps per connection — the selected database,
//! the protocol version replies are encoded with, the client's name and library,
//! whether it has authenticated, its transaction (`MULTI`, `WATCH`), its pub/sub
//! subscriptions — kept in the
//! server's [`ClientRegistry`] while the connection lives. The connection and
//! transaction commands (`crate::commands`) change it.

use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::clients::{ClientInfo, ClientRegistry};
use crate::commands::TransactionState;
use crate::pubsub::{Hub, Subscriber};
use crate::resp::RESP2;

/// The only user there is (no ACL).
pub(crate) const DEFAULT_USER: &[u8] = b"default";

/// What every session of one server shares.
#[derive(Default)]
pub(crate) struct Shared {
    /// When set, a client must authenticate as `default` with it first.
    pub(crate) password: Option<Bytes>,
    pub(crate) clients: Arc<ClientRegistry>,
    /// The port's pub/sub hub (the engine's, which its notifications go to).
    pub(crate) hub: Hub,
}

/// One connection's state.
pub(crate) struct Session {
    shared: Arc<Shared>,
    info: ClientInfo,
    /// Cancelled when the node closes this client's connection.
    closer: tokio_util::sync::CancellationToken,
    authenticated: bool,
    transaction: TransactionState,
    /// Its subscriptions, from its first (un)subscription on.
    subscriber: Option<Subscriber>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.clients.remove(self.info.id);
    }
}

impl Session {
    /// A new client connected from `addr` to `laddr`, registered in the server's clients.
    pub(crate) fn new(shared: Arc<Shared>, addr: SocketAddr, laddr: SocketAddr) -> Session {
        let info = shared.clients.register(addr, laddr);
        let closer = shared.clients.closer(info.id);
        let authenticated = shared.password.is_none();
        Session { shared, info, closer, authenticated, transaction: TransactionState::default(), subscriber: None }
    }

    /// Cancelled when the node closes this connection (see `Clients::close_db`).
    pub(crate) fn closer(&self) -> tokio_util::sync::CancellationToken {
        self.closer.clone()
    }

    pub(crate) fn id(&self) -> u64 {
        self.info.id
    }

    /// Whether commands other than `AUTH`, `HELLO`, `QUIT` and `RESET` may run.
    pub(crate) fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// The protocol version replies are encoded with.
    pub(crate) fn proto(&self) -> u8 {
        self.info.proto
    }

    /// The selected database.
    pub(crate) fn db(&self) -> usize {
        self.info.db
    }

    pub(crate) fn info(&self) -> &ClientInfo {
        &self.info
    }

    /// Every client of the server.
    pub(crate) fn clients(&self) -> &ClientRegistry {
        &self.shared.clients
    }

    /// Whether the server has a password (`AUTH <password>` needs one).
    pub(crate) fn password_configured(&self) -> bool {
        self.shared.password.is_some()
    }

    /// Like Redis without ACLs: the only user is `default`; without a password
    /// configured it takes any password.
    pub(crate) fn check_credentials(&self, user: &[u8], password: &[u8]) -> bool {
        let password_ok = match &self.shared.password {
            None => true,
            Some(expected) => constant_time_eq(expected, password),
        };
        user == DEFAULT_USER && password_ok
    }

    /// The commands queued since `MULTI` and the keys watched.
    pub(crate) fn transaction(&mut self) -> &mut TransactionState {
        &mut self.transaction
    }

    /// Its subscriptions (made on first use).
    pub(crate) fn subscriber(&mut self) -> &mut Subscriber {
        let (hub, id) = (&self.shared.hub, self.info.id);
        self.subscriber.get_or_insert_with(|| hub.subscriber(id))
    }

    /// Its subscriptions, if it ever made one: the connection delivers its messages.
    pub(crate) fn subscriptions(&self) -> Option<&Subscriber> {
        self.subscriber.as_ref()
    }

    /// Subscribed to anything: a RESP2 client is then in subscribed mode.
    pub(crate) fn subscribed(&self) -> bool {
        self.subscriber.as_ref().is_some_and(Subscriber::is_subscribed)
    }

    pub(crate) fn authenticate(&mut self) {
        self.authenticated = true;
    }

    /// Changes what `CLIENT LIST` shows of this client, and publishes it.
    pub(crate) fn update(&mut self, change: impl FnOnce(&mut ClientInfo)) {
        change(&mut self.info);
        self.shared.clients.update(&self.info);
    }

    /// Back to a new connection's state: database 0, RESP2, no name, no
    /// transaction, no key watched, no subscription, and unauthenticated when a
    /// password is configured.
    pub(crate) fn reset(&mut self) {
        self.authenticated = self.shared.password.is_none();
        self.transaction = TransactionState::default();
        self.subscriber = None;
        self.update(|info| {
            info.db = 0;
            info.proto = RESP2;
            info.name = Bytes::new();
        });
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a
/// guessed password was right.
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    for (i, &byte) in expected.iter().enumerate() {
        diff |= byte ^ given.get(i).copied().unwrap_or(!byte);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secre"));
        assert!(!constant_time_eq(b"secret", b"secrets"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
