//! Rule parsing, matching and templates.

use super::{parse::parse_template, *};

fn subject<'a>(comm: &'a str, ports: &'a [u16], cmdline: Option<&'a str>) -> Subject<'a> {
    Subject {
        comm,
        ports,
        cmdline,
        exe: None,
        cgroup: None,
    }
}

#[test]
fn defaults_parse_and_name_listeners_and_mysql() {
    let r = Rules::defaults();
    assert_eq!(
        r.names().collect::<Vec<_>>(),
        vec!["listener", "mysql", "systemd-unit", "top-cgroup"]
    );
    let name = |s: &Subject<'_>| r.name_process(s).map(|n| n.instance);
    assert_eq!(
        name(&subject("mariadbd", &[33060, 3307], None)).as_deref(),
        Some("mariadbd:3307")
    );
    for (cmd, want) in [
        ("/usr/sbin/mysqld --datadir=/d --port=3308", "mysqld:3308"),
        ("mysqld --port 3309", "mysqld:3309"),
        ("mysqld -P3310", "mysqld:3310"),
        ("mysqld -P 3311 --port=3312", "mysqld:3312"),
    ] {
        assert_eq!(
            name(&subject("mysqld", &[], Some(cmd))).as_deref(),
            Some(want),
            "{cmd}"
        );
    }
    assert_eq!(name(&subject("nginx", &[], Some("nginx --port=80"))), None);
    assert_eq!(name(&subject("mysqld", &[], Some("mysqld --port=x"))), None);
}

#[test]
fn cgroup_rules_name_units_then_top_level() {
    let r = Rules::defaults();
    let name = |path: &str| {
        let p = clean_cgroup(path);
        r.name_by_cgroup(&Subject {
            cgroup: Some(&p),
            ..Subject::default()
        })
        .map(|n| n.instance)
    };
    assert_eq!(
        name("/system.slice/mariadb@3307.service").as_deref(),
        Some("mariadb@3307.service")
    );
    assert_eq!(name("/machine/qemu-1").as_deref(), Some("machine"));
    assert_eq!(
        name("/../../system.slice/cron.service").as_deref(),
        Some("cron.service")
    );
    assert_eq!(name("/"), None);
}

#[test]
fn user_rules_with_captures_come_before_builtin_ones() {
    let text = r#"
[[rule]]
name = "app"
cmdline = 'app --shard=(\d+)'
exe = '/opt/(?P<tier>\w+)/'
instance = "app-{tier}-{1}"
"#;
    let r = parse(text, Some(DEFAULT_RULES)).expect("valid");
    let s = Subject {
        comm: "app",
        ports: &[8080],
        cmdline: Some("app --shard=7"),
        exe: Some("/opt/gold/bin/app"),
        cgroup: None,
    };
    let n = r.name_process(&s).expect("named");
    assert_eq!(n.instance, "app-gold-7");
    assert_eq!(&*n.rule, "app");
    // Without the exe the rule does not match; the built-in listener rule does.
    let s = Subject { exe: None, ..s };
    assert_eq!(r.name_process(&s).expect("named").instance, "app:8080");
}

#[test]
fn port_lists_and_missing_variables() {
    let text = r#"
[[rule]]
name = "pg"
port = [5432, 5433]
instance = "pg-{port}-{unit}"
"#;
    let r = parse(text, None).expect("valid");
    let with_unit = Subject {
        comm: "postgres",
        ports: &[9, 5433],
        cgroup: Some("/system.slice/postgresql@15-main.service"),
        ..Subject::default()
    };
    assert_eq!(
        r.name_process(&with_unit).expect("named").instance,
        "pg-5433-postgresql@15-main.service"
    );
    // No unit to fill in: no match.
    let no_unit = Subject {
        cgroup: Some("/"),
        ..with_unit
    };
    assert_eq!(r.name_process(&no_unit), None);
}

#[test]
fn container_and_pod_are_parsed_from_cgroup_paths() {
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let k8s = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_0000_4111_8222_123456789abc.slice/cri-containerd-{id}.scope"
    );
    let m = CgroupMeta::parse(&k8s);
    assert_eq!(m.container.as_deref(), Some("0123456789ab"));
    assert_eq!(
        m.pod_uid.as_deref(),
        Some("1b2c3d4e-0000-4111-8222-123456789abc")
    );
    assert_eq!(
        m.unit.as_deref(),
        Some(&*format!("cri-containerd-{id}.scope"))
    );
    let m = CgroupMeta::parse(&format!(
        "/kubepods/besteffort/pod1b2c3d4e-0000-4111-8222-123456789abc/{id}"
    ));
    assert_eq!(m.container.as_deref(), Some("0123456789ab"));
    assert!(m.pod_uid.is_some());
    let m = CgroupMeta::parse(&format!("/system.slice/docker-{id}.scope"));
    assert_eq!(m.container.as_deref(), Some("0123456789ab"));
    assert_eq!(m.pod_uid, None);
    assert_eq!(
        CgroupMeta::parse("/user.slice/pod.slice"),
        CgroupMeta::default()
    );
}

fn errors(text: &str) -> Vec<String> {
    match parse(text, None) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn bad_files_are_rejected_with_line_and_column() {
    let e = errors("[[rule]]\nname = \"a\"\ncomm = '(unclosed'\ninstance = \"x\"\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("line 3, column 8: rule \"a\": comm is not a valid regular expression"),
        "{e:?}"
    );
    let e = errors("[[rule]]\nname = \"a\"\ncomm = 'x'\ninstance = \"x\"\ncolour = 1\n");
    assert!(
        e[0].starts_with("line 5, column 1: unknown field `colour`"),
        "{e:?}"
    );
    let e = errors(
        "[[rule]]\nname = \"a\"\ncomm = 'x'\ninstance = \"x\"\n[[rule]]\nname = \"a\"\ncomm = 'y'\ninstance = \"y\"\n",
    );
    assert_eq!(e, vec!["line 6, column 8: duplicate rule name \"a\""]);
    let e = errors("[[rule]]\nname = \"a\"\ncomm = 'x(\\d)'\ninstance = \"{2}-{nope}-{}\"\n");
    assert!(e[0].contains("{} is not a variable"), "{e:?}");
    let e = errors("[[rule]]\nname = \"a\"\ncomm = 'x(\\d)'\ninstance = \"{2}\"\n");
    assert!(
        e[0].contains("{2}: the rule's expressions have 1 capture group(s)"),
        "{e:?}"
    );
    let e = errors("[[rule]]\nname = \"a\"\ninstance = \"x\"\n");
    assert!(e[0].contains("matches nothing"), "{e:?}");
    let e = errors("[[rule]]\nname = \"a\"\nport = 70000\ninstance = \"x\"\n");
    assert!(e[0].starts_with("line 3, column 8:"), "{e:?}");
    let e = errors("[instances]\nmax = 0\nexpire_after = \"5\"\n");
    assert_eq!(e.len(), 2, "{e:?}");
    // A number of hours past u64 seconds is an error, not an overflow (found by the fuzzer).
    let e = errors("[instances]\nexpire_after = \"18446744073709551615h\"\n");
    assert!(e[0].contains("too long"), "{e:?}");
    let e = errors("not toml at all");
    assert!(e[0].starts_with("line 1, column"), "{e:?}");
    // Every error of a file, not only the first.
    let e = errors(
        "[[rule]]\nname = \"a\"\ncomm = '['\ninstance = \"x\"\n[[rule]]\nname = \"b\"\nexe = '('\ninstance = \"y\"\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
}

#[test]
fn instances_table_and_builtin_switch() {
    let r = parse(
        "[instances]\nmax = 3\nexpire_after = \"2m\"\nbuiltin_rules = false\n",
        Some(DEFAULT_RULES),
    )
    .expect("valid");
    assert_eq!(
        (r.max_instances, r.expire_after),
        (3, Duration::from_secs(120))
    );
    assert_eq!(r.names().count(), 0);
    let r = parse("", Some(DEFAULT_RULES)).expect("empty file");
    assert_eq!(r.names().count(), 4);
}

#[test]
fn templates_escape_braces_and_hostile_text_stays_text() {
    assert_eq!(
        parse_template("a{{b}}").expect("ok"),
        vec![Piece::Text("a{b}".into())]
    );
    assert!(parse_template("a}b").is_err());
    assert!(parse_template("{comm").is_err());
    assert_eq!(cmdline_text(b"mysqld\0--port=1\0"), "mysqld --port=1");
    assert_eq!(cmdline_text(b"x\x1b[2J\0y"), "x\\x1b[2J y");
}
