//! The broker-wide sections: `[broker]` (also a group's own), `[[policy]]`, `[store]`,
//! `[metrics]`, `[admin]` and `[rebalance]`.

use super::*;

impl Checker<'_> {
    pub(super) fn broker(
        &mut self,
        at: &str,
        raw: Option<&RawBroker>,
        base: &BrokerPolicy,
    ) -> BrokerPolicy {
        let Some(raw) = raw else {
            return base.clone();
        };
        let key = |k: &str| format!("{at}.{k}");
        BrokerPolicy {
            memory_limit: self
                .size(
                    &key("memory_limit"),
                    raw.memory_limit.as_deref(),
                    Zero::Refused,
                )
                .unwrap_or(base.memory_limit),
            on_full: self
                .keyword(
                    &key("on_full"),
                    raw.on_full.as_deref(),
                    OnFull::parse,
                    OnFull::choices(),
                    "block",
                )
                .unwrap_or(base.on_full),
            max_redeliveries: self
                .whole(&key("max_redeliveries"), raw.max_redeliveries, 0, U32_MAX)
                .unwrap_or(base.max_redeliveries),
            topic_pending_limit: self
                .whole(
                    &key("topic_pending_limit"),
                    raw.topic_pending_limit,
                    1,
                    U32_MAX,
                )
                .unwrap_or(base.topic_pending_limit),
            topic_pending_size: self
                .size(
                    &key("topic_pending_size"),
                    raw.topic_pending_size.as_deref(),
                    Zero::Refused,
                )
                .or(base.topic_pending_size),
            prefetch: self
                .whole(&key("prefetch"), raw.prefetch, 1, U32_MAX)
                .unwrap_or(base.prefetch),
            max_frame_size: self
                .frame_size(&key("max_frame_size"), raw.max_frame_size.as_deref())
                .unwrap_or(base.max_frame_size),
            heartbeat: self
                .duration(&key("heartbeat"), raw.heartbeat.as_deref(), Zero::Allowed)
                .unwrap_or(base.heartbeat),
            connect_timeout: self
                .duration(
                    &key("connect_timeout"),
                    raw.connect_timeout.as_deref(),
                    Zero::Refused,
                )
                .unwrap_or(base.connect_timeout),
            max_subscriptions_per_connection: self
                .whole(
                    &key("max_subscriptions_per_connection"),
                    raw.max_subscriptions_per_connection,
                    1,
                    U32_MAX,
                )
                .unwrap_or(base.max_subscriptions_per_connection),
            stomp_max_headers: self
                .whole(&key("stomp_max_headers"), raw.stomp_max_headers, 1, U32_MAX)
                .unwrap_or(base.stomp_max_headers),
            stomp_max_header_length: self
                .size(
                    &key("stomp_max_header_length"),
                    raw.stomp_max_header_length.as_deref(),
                    Zero::Refused,
                )
                .unwrap_or(base.stomp_max_header_length),
            expiry_check_interval: self
                .duration(
                    &key("expiry_check_interval"),
                    raw.expiry_check_interval.as_deref(),
                    Zero::Refused,
                )
                .unwrap_or(base.expiry_check_interval),
            shutdown_timeout: self
                .duration(
                    &key("shutdown_timeout"),
                    raw.shutdown_timeout.as_deref(),
                    Zero::Refused,
                )
                .unwrap_or(base.shutdown_timeout),
        }
    }

    /// A frame's length travels as a u32, so the limit must fit one.
    fn frame_size(&mut self, key: &str, text: Option<&str>) -> Option<u32> {
        let bytes = self.size(key, text, Zero::Refused)?;
        let fits = u32::try_from(bytes).ok();
        if fits.is_none() {
            self.refuse(
                key,
                format!(
                    "is {:?}, but a frame's length is a 32-bit number, so at most 4294967295 bytes",
                    text.unwrap_or_default()
                ),
                "write at most \"4095MiB\", e.g. \"100MiB\"",
            );
        }
        fits
    }

    pub(super) fn policy(&mut self, at: &str, raw: &RawPolicy) -> Option<DestinationPolicy> {
        let key = |k: &str| format!("{at}.{k}");
        let destination = self
            .required(
                &key("destination"),
                raw.destination.as_deref(),
                "write the destinations it applies to, e.g. destination = \"queue://orders.>\"",
            )
            .and_then(|text| self.pattern(&key("destination"), text));
        let topic_pending_limit = self.whole(
            &key("topic_pending_limit"),
            raw.topic_pending_limit,
            1,
            U32_MAX,
        );
        let topic_pending_size = self.size(
            &key("topic_pending_size"),
            raw.topic_pending_size.as_deref(),
            Zero::Refused,
        );
        for (name, set) in [
            ("topic_pending_limit", topic_pending_limit.is_some()),
            ("topic_pending_size", topic_pending_size.is_some()),
        ] {
            match &destination {
                Some(pattern) if set && pattern.kind().is_queue() => self.refuse(
                    &key(name),
                    format!(
                        "only applies to topics, and {:?} is a queue pattern",
                        pattern.as_str()
                    ),
                    "remove it, or move it to a policy for topic:// destinations",
                ),
                _ => {}
            }
        }
        let policy = DestinationPolicy {
            destination: destination?,
            memory_limit: self.size(
                &key("memory_limit"),
                raw.memory_limit.as_deref(),
                Zero::Refused,
            ),
            max_redeliveries: self.whole(
                &key("max_redeliveries"),
                raw.max_redeliveries,
                0,
                U32_MAX,
            ),
            topic_pending_limit,
            topic_pending_size,
            prefetch: self.whole(&key("prefetch"), raw.prefetch, 1, U32_MAX),
            on_full: self.keyword(
                &key("on_full"),
                raw.on_full.as_deref(),
                OnFull::parse,
                OnFull::choices(),
                "block",
            ),
        };
        Some(policy)
    }

    pub(super) fn store(&mut self, raw: Option<&RawStore>) -> StoreOptions {
        let defaults = StoreOptions::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let segment_size = self
            .size(
                "store.segment_size",
                raw.segment_size.as_deref(),
                Zero::Refused,
            )
            .unwrap_or(defaults.segment_size);
        let store_limit = self.size(
            "store.store_limit",
            raw.store_limit.as_deref(),
            Zero::Refused,
        );
        if store_limit.is_some_and(|limit| limit < segment_size) {
            self.refuse(
                "store.store_limit",
                format!(
                    "is {:?}, less than one segment (segment_size {:?})",
                    raw.store_limit.as_deref().unwrap_or_default(),
                    raw.segment_size.as_deref().unwrap_or("64MiB")
                ),
                "make store_limit at least segment_size, or remove it for no limit",
            );
        }
        let options = StoreOptions {
            segment_size,
            store_limit,
            checkpoint_interval: self
                .duration(
                    "store.checkpoint_interval",
                    raw.checkpoint_interval.as_deref(),
                    Zero::Refused,
                )
                .unwrap_or(defaults.checkpoint_interval),
            group_commit_window: self
                .duration(
                    "store.group_commit_window",
                    raw.group_commit_window.as_deref(),
                    Zero::Allowed,
                )
                .unwrap_or(defaults.group_commit_window),
        };
        options
    }

    pub(super) fn metrics(&mut self, raw: Option<&RawMetrics>) -> MetricsOptions {
        let defaults = MetricsOptions::default();
        MetricsOptions {
            max_destinations: raw
                .and_then(|m| {
                    self.whole("metrics.max_destinations", m.max_destinations, 1, U32_MAX)
                })
                .unwrap_or(defaults.max_destinations),
        }
    }

    /// `[admin]`: the credential that running members require of topology writes.
    pub(super) fn admin(&mut self, raw: Option<&RawAdmin>) -> AdminOptions {
        let Some(token) = raw.and_then(|a| a.token.as_deref()) else {
            return AdminOptions::default();
        };
        if token.chars().count() < MIN_ADMIN_TOKEN || token.chars().any(char::is_whitespace) {
            self.refuse(
                "admin.token",
                format!(
                    "is {} characters long{}; an admin token must be at least {MIN_ADMIN_TOKEN} characters without spaces",
                    token.chars().count(),
                    if token.chars().any(char::is_whitespace) { " and holds whitespace" } else { "" }
                ),
                "run `meshmq token` and paste the secret it prints".to_string(),
            );
            return AdminOptions::default();
        }
        AdminOptions {
            token: Some(Secret::new(token.to_string())),
        }
    }

    pub(super) fn rebalance(&mut self, raw: Option<&RawRebalance>) -> RebalanceOptions {
        let defaults = RebalanceOptions::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let mut fraction = |key: &str, value: Option<f64>, min: f64, max: f64, example: &str| {
            let value = value?;
            if value.is_finite() && value >= min && value <= max {
                return Some(value);
            }
            self.refuse(
                key,
                format!("is {value}, but must be from {min} to {max}"),
                format!("write a number in that range, e.g. {example}"),
            );
            None
        };
        let threshold = fraction(
            "rebalance.threshold",
            raw.threshold,
            0.01,
            10.0,
            "threshold = 0.1 (10 % above the fair share)",
        );
        let rate = fraction(
            "rebalance.max_moves_per_second",
            raw.max_moves_per_second,
            0.1,
            1_000_000.0,
            "max_moves_per_second = 100.0",
        );
        RebalanceOptions {
            threshold: threshold.unwrap_or(defaults.threshold),
            max_moves_per_second: rate.unwrap_or(defaults.max_moves_per_second),
            window: self
                .duration("rebalance.window", raw.window.as_deref(), Zero::Allowed)
                .unwrap_or(defaults.window),
            failover_grace: self
                .duration(
                    "rebalance.failover_grace",
                    raw.failover_grace.as_deref(),
                    Zero::Allowed,
                )
                .unwrap_or(defaults.failover_grace),
            join_settle: self
                .duration(
                    "rebalance.join_settle",
                    raw.join_settle.as_deref(),
                    Zero::Allowed,
                )
                .unwrap_or(defaults.join_settle),
        }
    }
}
