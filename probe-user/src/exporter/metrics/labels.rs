//! Label sets as types: one struct per shape of series, its fields the label names in the
//! order they are written. prometheus-client 0.23 writes label values verbatim, so every string
//! value goes through [`escape`]; a label whose value is `None` is left out (an optional label,
//! not an empty one).

use std::fmt::{self, Write as _};

use prometheus_client::encoding::{
    EncodeLabelKey, EncodeLabelSet, LabelSetEncoder, LabelValueEncoder,
};

use crate::model::{io::Op, tcp::TcpDim};

/// A label value.
pub(super) trait LabelValue {
    fn write(&self, out: &mut LabelValueEncoder) -> fmt::Result;
    /// Whether the label is written at all.
    fn present(&self) -> bool {
        true
    }
}

/// Writes `s` escaped as the exposition formats require (`\\`, `\"`, `\n`). Values are already
/// printable (see `model::names`), but escaping here keeps the output valid whatever a caller
/// passes: a process named `a"b` would otherwise break the whole scrape.
fn escape(s: &str, out: &mut LabelValueEncoder) -> fmt::Result {
    let mut rest = s;
    while let Some(i) = rest.find(['\\', '"', '\n']) {
        out.write_str(&rest[..i])?;
        out.write_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        })?;
        rest = &rest[i + 1..];
    }
    out.write_str(rest)
}

impl LabelValue for &str {
    fn write(&self, out: &mut LabelValueEncoder) -> fmt::Result {
        escape(self, out)
    }
}

impl LabelValue for u16 {
    fn write(&self, out: &mut LabelValueEncoder) -> fmt::Result {
        write!(out, "{self}")
    }
}

impl<T: LabelValue> LabelValue for Option<T> {
    fn write(&self, out: &mut LabelValueEncoder) -> fmt::Result {
        self.as_ref().map_or(Ok(()), |v| v.write(out))
    }
    fn present(&self) -> bool {
        self.as_ref().is_some_and(LabelValue::present)
    }
}

/// `pid`: a process id, or `other` for what an instance's unlisted processes used.
#[derive(Clone, Copy, Debug)]
pub(super) enum Pid {
    Of(u32),
    Other,
}

impl LabelValue for Pid {
    fn write(&self, out: &mut LabelValueEncoder) -> fmt::Result {
        match self {
            Self::Of(pid) => write!(out, "{pid}"),
            Self::Other => out.write_str("other"),
        }
    }
}

impl LabelValue for Op {
    fn write(&self, out: &mut LabelValueEncoder) -> fmt::Result {
        out.write_str(self.label())
    }
}

/// `port` of a TCP series: the listening port, or `ephemeral` (outgoing connections).
#[derive(Clone, Copy, Debug)]
pub(super) struct Port<'a>(pub &'a TcpDim);

impl LabelValue for Port<'_> {
    fn write(&self, out: &mut LabelValueEncoder) -> fmt::Result {
        out.write_str(&self.0.port_label())
    }
}

/// Writes one label.
fn label(enc: &mut LabelSetEncoder, key: &str, value: &impl LabelValue) -> fmt::Result {
    if !value.present() {
        return Ok(());
    }
    let mut label = enc.encode_label();
    let mut k = label.encode_label_key()?;
    EncodeLabelKey::encode(&key, &mut k)?;
    let mut v = k.encode_label_value()?;
    value.write(&mut v)?;
    v.finish()
}

/// Declares a label set: a struct whose fields are its labels, in order.
macro_rules! label_set {
    ($($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty),+ $(,)? })+) => {$(
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub(super) struct $name<'a> {
            $(pub $field: $ty,)+
        }

        impl EncodeLabelSet for $name<'_> {
            fn encode(&self, mut enc: LabelSetEncoder) -> fmt::Result {
                $(label(&mut enc, stringify!($field), &self.$field)?;)+
                Ok(())
            }
        }
    )+};
}

label_set! {
    /// A per-instance series.
    Instance { service_instance: &'a str }
    /// `probe_instance_info`.
    InstanceInfo {
        service_instance: &'a str,
        rule: &'a str,
        container: &'a str,
        pod_uid: &'a str,
    }
    /// A per-process series (a top-K process, or the instance's `other` row).
    Process { service_instance: &'a str, pid: Pid, comm: &'a str }
    /// Block IO of an instance on a disk (`op` left out for dirtied bytes).
    Disk { service_instance: &'a str, device: &'a str, op: Option<Op> }
    /// Block IO of a process on a disk.
    ProcessDisk {
        service_instance: &'a str,
        pid: Pid,
        comm: &'a str,
        device: &'a str,
        op: Option<Op>,
    }
    /// A listening port of an instance.
    ListenPort { service_instance: &'a str, port: u16 }
    /// TCP of an instance on a port (`remote_port` on outgoing connections to a named port).
    Tcp {
        service_instance: &'a str,
        port: Port<'a>,
        remote_port: Option<u16>,
        direction: Option<&'a str>,
    }
    /// TCP bytes of a process on a port.
    ProcessTcp {
        service_instance: &'a str,
        pid: Pid,
        comm: &'a str,
        port: Port<'a>,
        remote_port: Option<u16>,
        direction: &'a str,
    }
    /// Self-metrics by outcome.
    Outcome { result: &'a str }
    Writeback { charged_to: &'a str }
    Collector { collector: &'a str }
    CollectorHook { collector: &'a str, hook: &'a str }
    Program { program: &'a str }
    File { file: &'a str }
    FileOutcome { file: &'a str, result: &'a str }
    Build { version: &'a str }
}

impl<'a> Tcp<'a> {
    pub fn of(service_instance: &'a str, dim: &'a TcpDim, direction: Option<&'a str>) -> Self {
        Self {
            service_instance,
            port: Port(dim),
            remote_port: dim.remote_port(),
            direction,
        }
    }
}
