//! The runtime options containerd hands the shim with a task: the
//! `runtimeoptions.v1.Options` of CRI's runtime configuration (and of
//! `ctr run --runtime-config-path`), whose ConfigPath names the kata-rs
//! configuration file for the pod.

use anyhow::{Context, Result};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{rt, CodedInputStream};

/// Field 2 of runtimeoptions.v1.Options (type_url 1, config_path 2,
/// config_body 3).
const CONFIG_PATH_FIELD: u32 = 2;
const LENGTH_DELIMITED: u32 = 2;

/// The configuration file named by `options`, if they are runtime options
/// that name one.
pub fn config_path(options: Option<&Any>) -> Result<Option<String>> {
    let Some(any) = options else {
        return Ok(None);
    };
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return Ok(None);
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    while let Some(tag) = input
        .read_raw_tag_or_eof()
        .context("the runtime options are not valid protobuf")?
    {
        if tag == CONFIG_PATH_FIELD << 3 | LENGTH_DELIMITED {
            let path = input
                .read_string()
                .context("the runtime options' ConfigPath is not a string")?;
            return Ok((!path.is_empty()).then_some(path));
        }
        rt::skip_field_for_tag(tag, &mut input)
            .context("the runtime options are not valid protobuf")?;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn config_path_is_read_from_runtime_options_only() {
        // type_url "x" (field 1), then config_path "/etc/k.toml" (field 2).
        let mut value = vec![0x0a, 1, b'x', 0x12, 11];
        value.extend_from_slice(b"/etc/k.toml");
        let options = any("runtimeoptions.v1.Options", value.clone());
        assert_eq!(
            config_path(Some(&options)).unwrap().as_deref(),
            Some("/etc/k.toml")
        );
        assert_eq!(config_path(None).unwrap(), None);
        let runc = any("containerd.runc.v1.Options", value);
        assert_eq!(config_path(Some(&runc)).unwrap(), None);
        let broken = any("runtimeoptions.v1.Options", vec![0x12, 50, b'/']);
        assert!(config_path(Some(&broken)).is_err());
    }
}
