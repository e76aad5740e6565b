use super::*;

fn addr(a: &str, len: u32) -> api::IPAddress {
    api::IPAddress {
        address: a.into(),
        prefix_len: len,
        ..Default::default()
    }
}

fn iface(name: &str, mac: &str, mtu: u32, addresses: Vec<api::IPAddress>) -> api::Interface {
    api::Interface {
        name: name.into(),
        mac: mac.into(),
        mtu,
        addresses,
        ..Default::default()
    }
}

fn route(destination: &str, gateway: &str, device: &str, source: &str) -> api::Route {
    api::Route {
        destination: destination.into(),
        gateway: gateway.into(),
        device: device.into(),
        source: source.into(),
        ..Default::default()
    }
}

/// A CNI bridge pod (10.88.0.5/16, IPv6 too) and a Calico-style second
/// interface (/32 with a link route to its gateway).
fn request() -> api::SetupNetworkRequest {
    api::SetupNetworkRequest {
        interfaces: vec![
            iface(
                "eth0",
                "02:a0:00:00:00:01",
                1400,
                vec![addr("10.88.0.5", 16), addr("fd00:88::5", 64)],
            ),
            iface(
                "eth1",
                "02:A0:00:00:00:02",
                0,
                vec![addr("192.168.7.2", 32)],
            ),
        ],
        routes: vec![
            route("169.254.1.1", "", "eth1", ""),
            route("10.99.0.0/16", "169.254.1.1", "eth1", "192.168.7.2"),
            route("", "10.88.0.1", "eth0", ""),
            route("::/0", "fd00:88::1", "eth0", ""),
            route("fd00:99::/64", "fe80::1", "eth1", ""),
        ],
        ..Default::default()
    }
}

fn p(a: &str, len: u8) -> Prefixed {
    Prefixed {
        addr: a.parse().expect("test address"),
        len,
    }
}

#[test]
fn a_valid_request_becomes_a_plan() {
    let plan = plan(&request()).expect("plan");
    assert_eq!(
        plan.interfaces,
        vec![
            InterfacePlan {
                name: "eth0".into(),
                mac: [2, 0xa0, 0, 0, 0, 1],
                mtu: Some(1400),
                addresses: vec![p("10.88.0.5", 16), p("fd00:88::5", 64)],
            },
            InterfacePlan {
                name: "eth1".into(),
                mac: [2, 0xa0, 0, 0, 0, 2],
                mtu: None,
                addresses: vec![p("192.168.7.2", 32)],
            },
        ]
    );
    let r = &plan.routes;
    assert_eq!(r.len(), 5);
    assert_eq!(r[0].destination, Some(p("169.254.1.1", 32)));
    assert_eq!((r[0].gateway, r[0].v6), (None, false));
    assert_eq!(r[1].source, Some("192.168.7.2".parse().expect("ip")));
    assert_eq!((r[2].destination, r[2].v6), (None, false));
    assert_eq!(r[2].device.as_deref(), Some("eth0"));
    // ::/0 is the default route too; the family comes from the gateway.
    assert_eq!((r[3].destination, r[3].v6), (None, true));
    assert_eq!(
        (r[4].destination, r[4].v6),
        (Some(p("fd00:99::", 64)), true)
    );
    assert_eq!(r[4].field, "routes[4]");
}

#[test]
fn the_first_ipv6_use_is_named_for_kernels_without_ipv6() {
    assert_eq!(
        first_ipv6(&plan(&request()).expect("plan")).as_deref(),
        Some("interfaces[0].addresses[1].address")
    );
    let mut req = request();
    req.interfaces[0].addresses.truncate(1);
    req.routes[3] = route("::/0", "fe80::1", "eth0", "");
    assert_eq!(
        first_ipv6(&plan(&req).expect("plan")).as_deref(),
        Some("routes[3]")
    );
    req.routes.truncate(3);
    assert_eq!(first_ipv6(&plan(&req).expect("plan")), None);
}

#[test]
fn an_empty_request_is_a_namespace_with_lo_only() {
    assert_eq!(
        plan(&api::SetupNetworkRequest::default()).expect("plan"),
        Plan::default()
    );
}

#[test]
fn bad_input_is_invalid_argument_naming_the_field() {
    type Edit = fn(&mut api::SetupNetworkRequest);
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "bad ip",
            |r| r.interfaces[0].addresses[0].address = "10.88.0.x".into(),
            "interfaces[0].addresses[0].address",
        ),
        (
            "ip with prefix",
            |r| r.interfaces[0].addresses[0].address = "10.88.0.5/16".into(),
            "interfaces[0].addresses[0].address",
        ),
        (
            "v4 prefix > 32",
            |r| r.interfaces[0].addresses[0].prefix_len = 33,
            "interfaces[0].addresses[0].prefix_len",
        ),
        (
            "v6 prefix > 128",
            |r| r.interfaces[0].addresses[1].prefix_len = 129,
            "interfaces[0].addresses[1].prefix_len",
        ),
        (
            "multicast address",
            |r| r.interfaces[1].addresses[0].address = "224.0.0.1".into(),
            "interfaces[1].addresses[0].address",
        ),
        (
            "empty name",
            |r| r.interfaces[1].name.clear(),
            "interfaces[1].name",
        ),
        (
            "long name",
            |r| r.interfaces[0].name = "a-very-long-name".into(),
            "interfaces[0].name",
        ),
        (
            "slash in name",
            |r| r.interfaces[0].name = "eth/0".into(),
            "interfaces[0].name",
        ),
        (
            "lo",
            |r| r.interfaces[0].name = "lo".into(),
            "interfaces[0].name",
        ),
        (
            "duplicate name",
            |r| r.interfaces[1].name = "eth0".into(),
            "interfaces[1].name",
        ),
        (
            "bad mac",
            |r| r.interfaces[0].mac = "02:a0:00:00:00".into(),
            "interfaces[0].mac",
        ),
        (
            "bad mac digits",
            |r| r.interfaces[0].mac = "02:a0:00:00:00:zz".into(),
            "interfaces[0].mac",
        ),
        (
            "duplicate mac",
            |r| r.interfaces[1].mac = "02:a0:00:00:00:01".into(),
            "interfaces[1].mac",
        ),
        (
            "bad cidr",
            |r| r.routes[1].destination = "10.99.0.0/x".into(),
            "routes[1].destination",
        ),
        (
            "cidr prefix > 32",
            |r| r.routes[1].destination = "10.99.0.0/33".into(),
            "routes[1].destination",
        ),
        (
            "host bits",
            |r| r.routes[1].destination = "10.99.0.1/16".into(),
            "routes[1].destination",
        ),
        (
            "bad gateway",
            |r| r.routes[2].gateway = "10.88.0".into(),
            "routes[2].gateway",
        ),
        (
            "mixed family",
            |r| r.routes[1].gateway = "fd00:88::1".into(),
            "routes[1].gateway",
        ),
        (
            "unknown device",
            |r| r.routes[2].device = "eth9".into(),
            "routes[2].device",
        ),
        (
            "foreign source",
            |r| r.routes[1].source = "192.168.7.9".into(),
            "routes[1].source",
        ),
        (
            "link-local gateway without device",
            |r| r.routes[4].device.clear(),
            "routes[4].device",
        ),
        (
            "gateway before its link route",
            |r| r.routes.swap(0, 1),
            "routes[0].gateway",
        ),
        (
            "gateway off every subnet",
            |r| r.routes[2].gateway = "10.89.0.1".into(),
            "routes[2].gateway",
        ),
        (
            "gateway on another device's subnet",
            |r| r.routes[2].device = "eth1".into(),
            "routes[2].gateway",
        ),
    ];
    for (what, edit, field) in cases {
        let mut req = request();
        edit(&mut req);
        match plan(&req) {
            Err(NetworkError::InvalidArgument { field: f, reason }) => {
                assert_eq!(f, field, "{what}: {reason}");
                assert!(!reason.is_empty(), "{what}");
            }
            other => panic!("{what}: expected INVALID_ARGUMENT on {field}, got {other:?}"),
        }
    }
}

#[test]
fn gateways_reachable_through_an_earlier_link_route_or_a_subnet_are_accepted() {
    let mut req = request();
    // No device: any interface's subnet will do.
    req.routes[2].device.clear();
    // A link route on a whole prefix, then a gateway in it.
    req.routes.push(route("172.16.0.0/24", "", "eth1", ""));
    req.routes
        .push(route("172.17.0.0/16", "172.16.0.254", "eth1", ""));
    // A default link route makes every gateway on that link reachable.
    req.routes.push(route("", "", "eth0", ""));
    req.routes
        .push(route("172.18.0.0/16", "203.0.113.1", "eth0", ""));
    let plan = plan(&req).expect("plan");
    assert_eq!(plan.routes.len(), 9);
}

#[test]
fn macs_parse_in_either_case_and_print_lowercase() {
    assert_eq!(
        parse_mac("02:A0:0b:00:00:FF"),
        Some([2, 0xa0, 0xb, 0, 0, 0xff])
    );
    for bad in [
        "",
        "02:a0:0b:00:00",
        "02:a0:0b:00:00:ff:01",
        "2:a0:0b:00:00:ff",
        "02-a0-0b-00-00-ff",
        "+2:a0:0b:00:00:ff",
    ] {
        assert_eq!(parse_mac(bad), None, "{bad:?}");
    }
    assert_eq!(format_mac(&[2, 0xa0, 0xb, 0, 0, 0xff]), "02:a0:0b:00:00:ff");
}

#[test]
fn cidrs_and_prefix_containment() {
    assert_eq!(
        parse_cidr("f", "10.88.0.0/16").expect("cidr"),
        p("10.88.0.0", 16)
    );
    assert_eq!(
        parse_cidr("f", "10.0.0.7").expect("host route"),
        p("10.0.0.7", 32)
    );
    assert_eq!(parse_cidr("f", "fd00::/8").expect("v6"), p("fd00::", 8));
    assert_eq!(
        parse_cidr("f", "0.0.0.0/0").expect("default"),
        p("0.0.0.0", 0)
    );
    assert!(parse_cidr("f", "fd00::1/8").is_err());
    assert!(parse_cidr("f", "fd00::/129").is_err());
    assert!(parse_cidr("f", "10.0.0.0/-1").is_err());
    assert!(p("10.88.0.5", 16).contains("10.88.255.1".parse().expect("ip")));
    assert!(!p("10.88.0.5", 16).contains("10.89.0.1".parse().expect("ip")));
    assert!(p("0.0.0.0", 0).contains("1.2.3.4".parse().expect("ip")));
    assert!(p("10.0.0.1", 32).contains("10.0.0.1".parse().expect("ip")));
    assert!(!p("10.0.0.1", 32).contains("10.0.0.2".parse().expect("ip")));
    assert!(p("fd00:88::5", 64).contains("fd00:88::1".parse().expect("ip")));
    assert!(!p("fd00:88::5", 64).contains("10.88.0.1".parse().expect("ip")));
}

fn nic(index: u32, name: &str, mac: Option<[u8; 6]>) -> Nic {
    Nic {
        index,
        name: name.into(),
        mac,
    }
}

#[test]
fn nics_are_matched_by_mac_and_a_missing_one_is_named() {
    let plan = plan(&request()).expect("plan");
    let nics = vec![
        nic(1, "lo", Some([0; 6])),
        nic(2, "eth0", Some([2, 0xa0, 0, 0, 0, 2])),
        nic(3, "eth1", Some([2, 0xa0, 0, 0, 0, 1])),
    ];
    let found = match_nics(&plan.interfaces, &nics).expect("match");
    assert_eq!(
        found.iter().map(|n| n.index).collect::<Vec<_>>(),
        vec![3, 2]
    );

    let e = match_nics(&plan.interfaces, &nics[..2]).expect_err("missing");
    let text = e.to_string();
    assert!(matches!(e, NetworkError::NicNotFound { .. }), "{text}");
    assert!(text.contains("02:a0:00:00:00:01"), "{text}");
    assert!(text.contains("interfaces[0].mac"), "{text}");
    assert!(text.contains("eth0 02:a0:00:00:00:02"), "{text}");
    assert!(!text.contains("lo"), "{text}");

    let twice = vec![
        nic(2, "eth0", Some([2, 0xa0, 0, 0, 0, 1])),
        nic(3, "eth1", Some([2, 0xa0, 0, 0, 0, 1])),
    ];
    assert!(matches!(
        match_nics(&plan.interfaces, &twice),
        Err(NetworkError::InvalidArgument { .. })
    ));
}

fn link(index: u32, current: &str, target: &str) -> (u32, String, String) {
    (index, current.into(), target.into())
}

#[test]
fn renames_go_through_temporary_names_only_when_names_clash() {
    assert_eq!(rename_steps(&[link(2, "eth0", "eth0")]), vec![]);
    assert_eq!(
        rename_steps(&[link(2, "enp0s1", "eth0"), link(3, "eth1", "eth1")]),
        vec![(2, "eth0".to_string())]
    );
    let swap = rename_steps(&[link(2, "eth0", "eth1"), link(3, "eth1", "eth0")]);
    assert_eq!(
        swap,
        vec![
            (2, "ampoule-tmp0".to_string()),
            (3, "ampoule-tmp1".to_string()),
            (2, "eth1".to_string()),
            (3, "eth0".to_string()),
        ]
    );
    // Temporary names avoid names in use.
    let odd = rename_steps(&[link(2, "ampoule-tmp0", "x"), link(3, "x", "ampoule-tmp0")]);
    assert_eq!(odd[0].1, "ampoule-tmp1");
    assert!(odd.iter().all(|(_, n)| n.len() <= MAX_IFNAME));
}

#[test]
fn route_messages_carry_family_scope_and_attributes() {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteScope};
    use rtnetlink::packet_route::AddressFamily;
    let plan = plan(&request()).expect("plan");
    let link = netlink::route_message(&plan.routes[0], Some(7)).expect("message");
    assert_eq!(link.header.address_family, AddressFamily::Inet);
    assert_eq!(link.header.scope, RouteScope::Link);
    assert_eq!(link.header.destination_prefix_length, 32);
    assert!(link.attributes.contains(&RouteAttribute::Oif(7)));

    let via = netlink::route_message(&plan.routes[1], Some(7)).expect("message");
    assert_eq!(via.header.scope, RouteScope::Universe);
    assert!(via
        .attributes
        .contains(&RouteAttribute::Gateway(RouteAddress::Inet(
            "169.254.1.1".parse().expect("ip")
        ))));
    assert!(via
        .attributes
        .contains(&RouteAttribute::PrefSource(RouteAddress::Inet(
            "192.168.7.2".parse().expect("ip")
        ))));

    let default6 = netlink::route_message(&plan.routes[3], Some(5)).expect("message");
    assert_eq!(default6.header.address_family, AddressFamily::Inet6);
    assert_eq!(default6.header.destination_prefix_length, 0);
    assert!(!default6
        .attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Destination(_))));
    assert_eq!(
        netlink::describe_route(&plan.routes[1]),
        "10.99.0.0/16 via 169.254.1.1 dev eth1 src 192.168.7.2"
    );
}

// ---------------------------------------------------------------------
// Against the kernel, as root, in throwaway namespaces.

/// Runs `f` on a thread of its own in a new network namespace and a new
/// mount namespace whose mounts do not propagate back: nothing it does
/// reaches the host's network or mounts, and all of it goes with the
/// thread. Err: this host cannot (not root, no unshare).
fn isolated<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let t = std::thread::spawn(move || {
        use nix::mount::{mount, MsFlags};
        use nix::sched::{unshare, CloneFlags};
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("unshare(CLONE_NEWNET|CLONE_NEWNS): {e}"))?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("making / private: {e}"))?;
        Ok(f())
    });
    match t.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Whether this host can run a netlink test; with AMPOULE_REQUIRE_VM=1 not
/// being able to is a failure.
fn host_netns_test(name: &str) -> bool {
    let missing = ["ip", "nsenter"]
        .into_iter()
        .find(|b| std::process::Command::new(b).arg("-V").output().is_err());
    let reason = if !nix::unistd::geteuid().is_root() {
        "not root".to_string()
    } else if let Some(b) = missing {
        format!("no {b} command")
    } else {
        return true;
    };
    cannot(name, &reason);
    false
}

fn cannot(name: &str, reason: &str) {
    if std::env::var("AMPOULE_REQUIRE_VM").as_deref() == Ok("1") {
        panic!("{name}: AMPOULE_REQUIRE_VM=1 but {reason}");
    }
    println!("SKIPPED: {name}: {reason}");
}

fn run(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_in(netns: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let ns = format!("--net={}", netns.display());
    let mut cmd = vec!["nsenter", ns.as_str(), "ip", "-j"];
    cmd.extend_from_slice(args);
    serde_json::from_str(&run(&cmd)).unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn setup(net: &PodNetwork, req: &api::SetupNetworkRequest) -> Result<(), NetworkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(net.setup(req))
}

/// Removes the test's directory (and the binding in it) however the test
/// ends.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0.join("netns/pod"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn find<'a>(items: &'a [serde_json::Value], key: &str, value: &str) -> &'a serde_json::Value {
    items
        .iter()
        .find(|i| i[key] == value)
        .unwrap_or_else(|| panic!("no {key}={value} in {items:#?}"))
}

#[test]
fn pod_network_is_set_up_in_throwaway_namespaces() {
    let name = "pod_network_is_set_up_in_throwaway_namespaces";
    if !host_netns_test(name) {
        return;
    }
    let r = isolated(|| {
        // This thread's namespace stands in for the guest's root one, with
        // two veth NICs named the other way round from the request.
        let dir = TempDir(
            std::env::temp_dir().join(format!("ampoule-netns-test-{}", std::process::id())),
        );
        let pod_path = dir.0.join("netns/pod");
        for (nic, mac, peer) in [
            ("eth0", "02:a0:00:00:00:02", "peer0"),
            ("eth1", "02:a0:00:00:00:01", "peer1"),
            ("eth2", "02:a0:00:00:00:03", "peer2"),
        ] {
            run(&[
                "ip", "link", "add", nic, "address", mac, "type", "veth", "peer", "name", peer,
            ]);
            run(&["ip", "link", "set", peer, "up"]);
        }
        let net = PodNetwork::new(&pod_path);

        // A NIC that is not there: an error naming it, and nothing made.
        let mut req = request();
        req.interfaces[1].mac = "02:a0:00:00:00:99".into();
        let e = setup(&net, &req).expect_err("missing NIC");
        assert!(matches!(e, NetworkError::NicNotFound { .. }), "{e}");
        assert!(e.to_string().contains("02:a0:00:00:00:99"), "{e}");
        assert!(e.to_string().contains("eth2 02:a0:00:00:00:03"), "{e}");
        assert!(
            !pod_path.exists(),
            "nothing is created before the NICs are found"
        );

        // A failure in the kernel after the namespace was made (veth's
        // minimum MTU is 68): the binding is undone.
        let mut req = request();
        req.interfaces.truncate(1);
        req.interfaces[0].mac = "02:a0:00:00:00:03".into();
        req.interfaces[0].mtu = 10;
        req.routes.clear();
        let e = setup(&net, &req).expect_err("bad MTU");
        assert!(matches!(e, NetworkError::Netlink(_)), "{e}");
        assert!(e.to_string().contains("MTU of eth0 to 10"), "{e}");
        assert!(
            !netns::is_bound(&pod_path) && !pod_path.exists(),
            "rolled back"
        );

        // The real thing.
        setup(&net, &request()).expect("setup");
        assert!(netns::is_bound(&pod_path));

        let links = json_in(&pod_path, &["link", "show"]);
        let eth0 = find(&links, "ifname", "eth0");
        assert_eq!(
            eth0["address"], "02:a0:00:00:00:01",
            "found by MAC and renamed: {eth0}"
        );
        assert_eq!(eth0["mtu"], 1400);
        assert!(
            eth0["flags"]
                .as_array()
                .is_some_and(|f| f.contains(&"UP".into())),
            "{eth0}"
        );
        let eth1 = find(&links, "ifname", "eth1");
        assert_eq!(eth1["address"], "02:a0:00:00:00:02");
        assert_eq!(eth1["mtu"], 1500, "MTU 0 keeps the NIC's");
        assert!(
            eth1["flags"]
                .as_array()
                .is_some_and(|f| f.contains(&"UP".into())),
            "{eth1}"
        );
        let lo = find(&links, "ifname", "lo");
        assert!(
            lo["flags"]
                .as_array()
                .is_some_and(|f| f.contains(&"UP".into())),
            "{lo}"
        );
        assert_eq!(links.len(), 3, "{links:#?}");

        let addrs = json_in(&pod_path, &["addr", "show"]);
        let has = |dev: &str, local: &str, len: u64| {
            find(&addrs, "ifname", dev)["addr_info"]
                .as_array()
                .is_some_and(|a| {
                    a.iter()
                        .any(|i| i["local"] == local && i["prefixlen"] == len)
                })
        };
        assert!(has("eth0", "10.88.0.5", 16), "{addrs:#?}");
        assert!(has("eth0", "fd00:88::5", 64), "{addrs:#?}");
        assert!(has("eth1", "192.168.7.2", 32), "{addrs:#?}");
        assert!(has("lo", "127.0.0.1", 8), "{addrs:#?}");

        let v4 = json_in(&pod_path, &["-4", "route", "show"]);
        let default = find(&v4, "dst", "default");
        assert_eq!(
            (&default["gateway"], &default["dev"]),
            (&"10.88.0.1".into(), &"eth0".into())
        );
        let link = find(&v4, "dst", "169.254.1.1");
        assert_eq!(
            (&link["dev"], &link["scope"]),
            (&"eth1".into(), &"link".into())
        );
        let via = find(&v4, "dst", "10.99.0.0/16");
        assert_eq!(via["gateway"], "169.254.1.1");
        assert_eq!(via["dev"], "eth1");
        assert_eq!(via["prefsrc"], "192.168.7.2");
        let v6 = json_in(&pod_path, &["-6", "route", "show"]);
        let default6 = find(&v6, "dst", "default");
        assert_eq!(default6["gateway"], "fd00:88::1");
        assert_eq!(default6["dev"], "eth0");
        let via_link_local = find(&v6, "dst", "fd00:99::/64");
        assert_eq!(via_link_local["gateway"], "fe80::1");
        assert_eq!(via_link_local["dev"], "eth1");

        // The NICs left this (the "root") namespace.
        let root: Vec<serde_json::Value> =
            serde_json::from_str(&run(&["ip", "-j", "link", "show"])).expect("json");
        let names: Vec<&str> = root.iter().filter_map(|l| l["ifname"].as_str()).collect();
        assert!(
            !names.contains(&"eth0") && !names.contains(&"eth1"),
            "{names:?}"
        );

        // Once only.
        let e = setup(&net, &request()).expect_err("second call");
        assert!(matches!(e, NetworkError::AlreadyExists(_)), "{e}");
        assert!(
            e.to_string().contains(&pod_path.display().to_string()),
            "{e}"
        );
        println!(
            "pod netns: links {:?}\nv4 routes {}\nv6 routes {}",
            links.iter().map(|l| &l["ifname"]).collect::<Vec<_>>(),
            serde_json::to_string(&v4).unwrap_or_default(),
            serde_json::to_string(&v6).unwrap_or_default()
        );
    });
    if let Err(reason) = r {
        cannot(name, &reason);
    }
}
