//! Prometheus metrics, served at `/metrics` in the OpenMetrics text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

/// The server's counters and gauges.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) connections: Gauge,
    rooms: Gauge,
    peers: Gauge,
    pub(crate) relayed: Counter,
    rejects: Family<Reason, Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let connections = Gauge::default();
        let rooms = Gauge::default();
        let peers = Gauge::default();
        let relayed = Counter::default();
        let rejects = Family::<Reason, Counter>::default();
        registry.register(
            "connections",
            "Open signaling WebSocket connections",
            connections.clone(),
        );
        registry.register("rooms", "Rooms with at least one member", rooms.clone());
        registry.register("peers", "Peers that have joined a room", peers.clone());
        registry.register(
            "messages_relayed",
            "Signals relayed from one peer to another",
            relayed.clone(),
        );
        registry.register(
            "rejects",
            "Refused connections and frames, by reason",
            rejects.clone(),
        );
        Self {
            registry,
            connections,
            rooms,
            peers,
            relayed,
            rejects,
        }
    }

    /// Counts one refusal; `reason` is an error code or `origin`/`ip_rate`.
    pub(crate) fn reject(&self, reason: &str) {
        self.rejects
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The text exposition, with the room gauges set to `rooms`/`peers`.
    pub(crate) fn render(&self, rooms: usize, peers: usize) -> String {
        self.rooms.set(i64::try_from(rooms).unwrap_or(i64::MAX));
        self.peers.set(i64::try_from(peers).unwrap_or(i64::MAX));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_the_text_format() {
        let m = Metrics::new();
        m.connections.inc();
        m.relayed.inc_by(3);
        m.reject("rate_limited");
        let text = m.render(2, 5);
        for line in [
            "ferry_connections 1",
            "ferry_rooms 2",
            "ferry_peers 5",
            "ferry_messages_relayed_total 3",
            "ferry_rejects_total{reason=\"rate_limited\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
