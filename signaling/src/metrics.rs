//! Prometheus metrics, served at `/metrics` in the OpenMetrics text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
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
    pub(crate) relay_latency: Histogram,
    rejects: Family<Reason, Counter>,
}

/// Upper bounds of the relay-latency buckets, in seconds.
const RELAY_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0,
];

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let connections = Gauge::default();
        let rooms = Gauge::default();
        let peers = Gauge::default();
        let relayed = Counter::default();
        let relay_latency = Histogram::new(RELAY_BUCKETS);
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
            "relay_latency_seconds",
            "Time from reading a signal off its sender's socket to flushing it to its recipient's, for recipients on this instance",
            relay_latency.clone(),
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
            relay_latency,
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
        m.relay_latency.observe(0.000_3);
        let text = m.render(2, 5);
        for line in [
            "ferry_connections 1",
            "ferry_rooms 2",
            "ferry_peers 5",
            "ferry_messages_relayed_total 3",
            "ferry_rejects_total{reason=\"rate_limited\"} 1",
            "ferry_relay_latency_seconds_bucket{le=\"0.00025\"} 0",
            "ferry_relay_latency_seconds_bucket{le=\"0.0005\"} 1",
            "ferry_relay_latency_seconds_count 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
