//! `[[connector]]`: endpoints, transports, credentials and the links no two connectors may share.

use super::*;

impl Checker<'_> {
    pub(super) fn connectors(
        &mut self,
        raw: &[RawConnector],
        raw_groups: &[RawGroup],
        groups: &[Option<Group>],
        security: &Security,
    ) -> Vec<Option<Connector>> {
        let effective: Vec<Option<String>> = raw.iter().map(RawConnector::effective_name).collect();
        let names: Vec<Option<&str>> = effective.iter().map(Option::as_deref).collect();
        let connector_labels = labels(&names);
        let group_names: Vec<&str> = raw_groups
            .iter()
            .filter_map(|g| g.name.as_deref())
            .collect();
        let mut connectors = Vec::new();
        for (i, c) in raw.iter().enumerate() {
            let at = format!("connector[{}]", connector_labels[i]);
            if let Some(first) = names[..i]
                .iter()
                .position(|n| n.is_some() && *n == names[i])
            {
                self.refuse(
                    &format!("{at}.name"),
                    format!(
                        "{:?} is also the name of connector[{}]",
                        names[i].unwrap_or_default(),
                        connector_labels[first]
                    ),
                    "give each connector a different name (the default is \"<from>-<to>\")",
                );
            }
            let pair = self.endpoints(&at, c, &group_names);
            if let Some((from, to)) = pair {
                self.duplicate_link(&at, c, from, to, &raw[..i], &connector_labels);
                if let Some(target) = groups.iter().flatten().find(|g| g.name.as_str() == to) {
                    self.transport_reaches(&at, c, target);
                }
            }
            let connector = self.connector(&at, c, security);
            if let Some(connector) = &connector {
                self.uri_reaches_target(&at, connector, groups);
            }
            connectors.push(connector);
        }
        connectors
    }

    /// A connector's `uri` must not lead to a member of another group than `to` — above all
    /// not back to a listener of its own group, under whatever spelling (`localhost`, another
    /// loopback address of a listener bound to every address): such a bridge could never come
    /// up, and would dial for ever. A URI reaches a listener on the same port at the same IP,
    /// or at a loopback IP when the listener binds every address. Host names are resolved only
    /// when some listener of another group has the URI's port. A URI that reaches a member of
    /// `to` as well (members on different machines) is left alone.
    fn uri_reaches_target(&mut self, at: &str, c: &Connector, groups: &[Option<Group>]) {
        let Some(url) = &c.uri else {
            return;
        };
        let reaches = |listener: SocketAddr, dialled: SocketAddr| {
            listener.port() == dialled.port()
                && (listener.ip() == dialled.ip()
                    || (listener.ip().is_unspecified()
                        && (dialled.ip().is_loopback() || dialled.ip().is_unspecified())))
        };
        for uri in &url.uris {
            let listeners = |want_to: bool| {
                groups
                    .iter()
                    .flatten()
                    .filter(move |g| (g.name == c.to) == want_to)
                    .flat_map(|g| {
                        g.members.iter().flat_map(move |m| {
                            m.listeners
                                .iter()
                                .filter(|l| l.url.addr.port() == uri.port)
                                .map(move |l| (g, m, l))
                        })
                    })
            };
            if listeners(false).next().is_none() {
                continue;
            }
            let dialled: Vec<SocketAddr> = match uri.host.parse::<std::net::IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, uri.port)],
                Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(uri.host.as_str(), uri.port))
                    .map(Iterator::collect)
                    .unwrap_or_default(),
            };
            let reached = |want_to: bool| {
                listeners(want_to).find(|(_, _, l)| dialled.iter().any(|d| reaches(l.url.addr, *d)))
            };
            if reached(true).is_some() {
                continue;
            }
            let Some((group, member, listener)) = reached(false) else {
                continue;
            };
            let whose = if group.name == c.from {
                format!(
                    "its own group {}: the connector would dial itself",
                    group.name
                )
            } else {
                format!("group {}, not {}", group.name, c.to)
            };
            self.refuse(
                &format!("{at}.uri"),
                format!(
                    "names {uri}, which reaches member {}'s listener {} of {whose}",
                    member.name, listener.url
                ),
                format!(
                    "point the uri at the listeners of {}'s members, or remove it to dial them",
                    c.to
                ),
            );
        }
    }

    /// Checks `from`/`to`; answers them when both name groups of the file and differ.
    fn endpoints<'r>(
        &mut self,
        at: &str,
        c: &'r RawConnector,
        group_names: &[&str],
    ) -> Option<(&'r str, &'r str)> {
        let mut ends = Vec::new();
        for (k, value, example) in [
            ("from", c.from.as_deref(), "hub"),
            ("to", c.to.as_deref(), "edge-1"),
        ] {
            let key = format!("{at}.{k}");
            let Some(value) = self.required(
                &key,
                value,
                &format!("name a group, e.g. {k} = \"{example}\""),
            ) else {
                continue;
            };
            if group_names.contains(&value) {
                ends.push(value);
            } else {
                self.refuse(
                    &key,
                    format!("no group is named {value:?}"),
                    format!("use one of: {}", group_names.join(", ")),
                );
            }
        }
        let [from, to] = ends[..] else {
            return None;
        };
        if from == to {
            self.refuse(
                &format!("{at}.to"),
                format!("is {to:?}, the same group as from: a connector from a group to itself forwards nothing"),
                "set to to another group, or remove the connector",
            );
            return None;
        }
        Some((from, to))
    }

    fn duplicate_link(
        &mut self,
        at: &str,
        c: &RawConnector,
        from: &str,
        to: &str,
        earlier: &[RawConnector],
        labels: &[String],
    ) {
        let duplex = c.duplex.unwrap_or(false);
        for (j, other) in earlier.iter().enumerate() {
            let (Some(other_from), Some(other_to)) = (other.from.as_deref(), other.to.as_deref())
            else {
                continue;
            };
            let other_duplex = other.duplex.unwrap_or(false);
            if other_from == from && other_to == to {
                self.refuse(
                    at,
                    format!("links {from} to {to}, like connector[{}]", labels[j]),
                    "keep one connector per pair of groups and merge their options",
                );
                return;
            }
            if other_from == to && other_to == from && (duplex || other_duplex) {
                self.refuse(
                    at,
                    format!(
                        "links {from} to {to}, but connector[{}] links {to} to {from} and a duplex connector already forwards both ways",
                        labels[j]
                    ),
                    "remove one of them, or set duplex = false on both",
                );
                return;
            }
        }
    }

    fn transport_reaches(&mut self, at: &str, c: &RawConnector, target: &Group) {
        let Some(transport) = c
            .transport
            .as_deref()
            .map_or(Some(ConnectorTransport::Tcp), ConnectorTransport::parse)
        else {
            return; // refused in `connector`
        };
        let scheme = transport.scheme();
        let missing: Vec<&str> = target
            .members
            .iter()
            .filter(|m| !m.listeners.iter().any(|l| l.url.scheme == scheme))
            .map(|m| m.name.as_str())
            .collect();
        if missing.is_empty() {
            return;
        }
        self.refuse(
            &format!("{at}.transport"),
            format!(
                "is \"{transport}\"{}, but {} {} of group {} {} no {scheme} listener",
                if c.transport.is_none() { " (the default)" } else { "" },
                if missing.len() == 1 { "member" } else { "members" },
                missing.join(", "),
                target.name,
                if missing.len() == 1 { "has" } else { "have" },
            ),
            format!("give every member of {} a listener with scheme {scheme}, or set transport to a scheme they all listen on", target.name),
        );
    }

    /// A connector's `uri`: a failover (or single broker) URL of the transport's scheme whose
    /// options a connector can honour, not set twice with the reconnect_* keys.
    fn connector_uri(
        &mut self,
        key: &str,
        text: &str,
        c: &RawConnector,
        transport: ConnectorTransport,
    ) -> Option<crate::url::FailoverUrl> {
        const FIX: &str = "write failover:(tcp://HOST:PORT,tcp://HOST:PORT)?option=value with ActiveMQ failover options (initialReconnectDelay, maxReconnectDelay, useExponentialBackOff, reconnectDelayExponent, randomize, nested.*)";
        let url = match crate::url::ConnectUrl::parse(text) {
            Ok(u) => u.into_failover(),
            Err(e) => {
                self.refuse(key, e.to_string(), FIX);
                return None;
            }
        };
        let client_only = url.options.client_only_changes();
        if !client_only.is_empty() {
            self.refuse(
                key,
                format!("sets {} (only clients honour them)", client_only.join(", ")),
                FIX,
            );
        }
        let scheme = transport.scheme().to_string();
        if let Some(other) = url.uris.iter().find(|u| u.scheme != scheme) {
            self.refuse(
                key,
                format!("names {other}, but the connector's transport is {transport}"),
                format!("write {scheme}:// URIs, or set transport to their scheme"),
            );
        }
        let both: Vec<&str> = [
            (
                "reconnect_initial_delay",
                c.reconnect_initial_delay.is_some(),
            ),
            ("reconnect_max_delay", c.reconnect_max_delay.is_some()),
            ("reconnect_multiplier", c.reconnect_multiplier.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        if !both.is_empty() {
            self.refuse(
                key,
                format!("is set together with {}", both.join(", ")),
                "set the reconnect delays in one place: the uri's failover options or the reconnect_* keys",
            );
        }
        Some(url)
    }

    fn connector(&mut self, at: &str, c: &RawConnector, security: &Security) -> Option<Connector> {
        let key = |k: &str| format!("{at}.{k}");
        let name = c
            .effective_name()
            .and_then(|n| match ConnectorName::parse(&n) {
                Ok(name) => Some(name),
                Err(e) if c.name.is_none() => {
                    self.refuse(
                        &key("name"),
                        format!("the default name {n:?} is not valid ({})", e.reason),
                        format!("set name explicitly; {NAME_FIX}"),
                    );
                    None
                }
                Err(e) => {
                    self.refuse(&key("name"), e.to_string(), NAME_FIX);
                    None
                }
            });
        let network_ttl = self
            .whole(&key("network_ttl"), c.network_ttl, 1, U32_MAX)
            .unwrap_or(1);
        let message_ttl = self
            .whole(&key("message_ttl"), c.message_ttl, 1, U32_MAX)
            .unwrap_or(network_ttl);
        let consumer_ttl = self
            .whole(&key("consumer_ttl"), c.consumer_ttl, 1, U32_MAX)
            .unwrap_or(network_ttl);
        let consumer_priority_base = self
            .whole(
                &key("consumer_priority_base"),
                c.consumer_priority_base,
                i64::from(i32::MIN),
                i64::from(i32::MAX),
            )
            .unwrap_or(-5);
        let prefetch = self
            .whole(&key("prefetch"), c.prefetch, 1, U32_MAX)
            .unwrap_or(1000);
        let mut patterns_ok = true;
        let mut patterns =
            |checker: &mut Self, list: &str, texts: &[String]| -> Vec<DestinationPattern> {
                let mut out = Vec::new();
                for (i, text) in texts.iter().enumerate() {
                    let p = checker.pattern(&format!("{at}.{list}[{i}]"), text);
                    patterns_ok &= p.is_some();
                    out.extend(p);
                }
                out
            };
        let dynamically_included = patterns(self, "dynamically_included", &c.dynamically_included);
        let statically_included = patterns(self, "statically_included", &c.statically_included);
        let excluded = patterns(self, "excluded", &c.excluded);
        if c.suppress_duplicate_topic_subscriptions == Some(false) {
            self.refuse(
                &key("suppress_duplicate_topic_subscriptions"),
                "is false, which would give every network topic subscription its own copy, so a \
                 topic message would reach a group once per route in a cyclic mesh; meshmq always \
                 sends each topic message to each subscribing group once, over its shortest route",
                "remove the key or set it to true",
            );
        }
        let static_bridge = c.static_bridge.unwrap_or(false);
        if static_bridge && c.statically_included.is_empty() {
            self.refuse(
                &key("static_bridge"),
                "is true, but statically_included is empty, so the bridge would forward nothing",
                "list the destinations to forward in statically_included, or set static_bridge = false",
            );
        }
        let replay_delay = self
            .duration(
                &key("replay_delay"),
                c.replay_delay.as_deref(),
                Zero::Allowed,
            )
            .unwrap_or(Duration::from_secs(1));
        let transport = self
            .keyword(
                &key("transport"),
                c.transport.as_deref(),
                ConnectorTransport::parse,
                ConnectorTransport::choices(),
                "tcp",
            )
            .unwrap_or(ConnectorTransport::Tcp);
        let initial = self
            .duration(
                &key("reconnect_initial_delay"),
                c.reconnect_initial_delay.as_deref(),
                Zero::Refused,
            )
            .unwrap_or(Duration::from_secs(1));
        let max = self
            .duration(
                &key("reconnect_max_delay"),
                c.reconnect_max_delay.as_deref(),
                Zero::Refused,
            )
            .unwrap_or(Duration::from_secs(30));
        if max < initial {
            self.refuse(
                &key("reconnect_max_delay"),
                format!(
                    "is {}{}, shorter than reconnect_initial_delay ({})",
                    humantime::format_duration(max),
                    if c.reconnect_max_delay.is_none() {
                        " (the default)"
                    } else {
                        ""
                    },
                    humantime::format_duration(initial)
                ),
                "make reconnect_max_delay at least reconnect_initial_delay",
            );
        }
        let multiplier = c.reconnect_multiplier.unwrap_or(2.0);
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            self.refuse(
                &key("reconnect_multiplier"),
                format!("is {multiplier}, but must be at least 1.0"),
                "write 1.0 to retry at a constant delay, or more to back off, e.g. reconnect_multiplier = 2.0",
            );
        }
        let uri = c
            .uri
            .as_deref()
            .and_then(|text| self.connector_uri(&key("uri"), text, c, transport));
        let heartbeat = self
            .duration(&key("heartbeat"), c.heartbeat.as_deref(), Zero::Refused)
            .unwrap_or(Duration::from_secs(1));
        let handshake_timeout = self
            .duration(
                &key("handshake_timeout"),
                c.handshake_timeout.as_deref(),
                Zero::Refused,
            )
            .unwrap_or(Duration::from_secs(10));
        if let Some(username) = &c.username {
            if !security.users.is_empty() && !security.users.iter().any(|u| &u.name == username) {
                self.refuse(
                    &key("username"),
                    format!("{username:?} is not a user in [security]"),
                    format!("add a [[security.user]] named {username:?}, or fix the name"),
                );
            }
        }
        if c.password_file.is_some() && c.username.is_none() {
            self.refuse(
                &key("password_file"),
                "is set, but username is not",
                "set username too, or remove password_file",
            );
        }
        let password_file = self.path(&key("password_file"), c.password_file.as_deref());
        let tls_ca = self.path(&key("tls_ca"), c.tls_ca.as_deref());
        match (&transport, &tls_ca) {
            (ConnectorTransport::Tcp, Some(_)) => self.refuse(
                &key("tls_ca"),
                "is set, but the transport is tcp (no TLS)",
                "remove tls_ca, or set transport = \"ssl\" or \"quic\"",
            ),
            (ConnectorTransport::Ssl | ConnectorTransport::Quic, None) => self.refuse(
                &key("tls_ca"),
                "is missing: ssl and quic connectors verify the target's certificate",
                "set tls_ca to the CA file that signed the target members' certificates, e.g. the ca.pem of `meshmq certs`",
            ),
            _ => {}
        }
        if !patterns_ok {
            return None;
        }
        Some(Connector {
            name: name?,
            from: GroupName::parse(c.from.as_deref()?).ok()?,
            to: GroupName::parse(c.to.as_deref()?).ok()?,
            duplex: c.duplex.unwrap_or(false),
            message_ttl,
            consumer_ttl,
            conduit_subscriptions: c.conduit_subscriptions.unwrap_or(true),
            decrease_network_consumer_priority: c
                .decrease_network_consumer_priority
                .unwrap_or(true),
            consumer_priority_base,
            prefetch,
            dynamically_included,
            statically_included,
            excluded,
            static_bridge,
            bridge_temp_destinations: c.bridge_temp_destinations.unwrap_or(true),
            always_sync_send: c.always_sync_send.unwrap_or(true),
            suppress_duplicate_queue_subscriptions: c
                .suppress_duplicate_queue_subscriptions
                .unwrap_or(false),
            replay_when_no_consumers: c.replay_when_no_consumers.unwrap_or(true),
            replay_delay,
            transport,
            uri,
            reconnect_initial_delay: initial,
            reconnect_max_delay: max,
            reconnect_multiplier: multiplier,
            heartbeat,
            handshake_timeout,
            username: c.username.clone(),
            password_file,
            tls_ca,
        })
    }
}
