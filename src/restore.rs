//! `tcmu-sg prepare-restore`: LIO's saved configuration, made safe to
//! restore with tcmu-runner on the host.
//!
//! tcmu-runner enables netlink replies for the whole module and answers
//! every ADDED_DEVICE with a failure for a subtype it cannot open, `sg`
//! included; the kernel takes its answer and the device is not created. A
//! `user:sg` backstore is safe only if `nl_reply_supported=-1` is in its
//! control string, written before it is enabled. rtslib saves that value
//! among the attributes, which a restore writes after enabling, so every
//! restore would lose the device. The packaged drop-in for
//! `rtslib-fb-targetctl.service` runs this before `targetctl restore`: it
//! adds the setting to the saved control string of every `user` backstore
//! whose config starts with `sg/`, and leaves everything else as it is.

use std::path::Path;

use serde_json::Value;

/// The files `targetctl restore` reads: Debian's, then upstream's.
pub const SAVE_FILES: [&str; 2] = [
    "/etc/rtslib-fb-target/saveconfig.json",
    "/etc/target/saveconfig.json",
];

const SETTING: &str = "nl_reply_supported=-1";

/// Adds the setting where it is missing; returns the backstores changed
/// (`user_<hba>/<name>` or the name) and the new text, or None when
/// nothing changed.
pub fn prepare(text: &str) -> Result<Option<(Vec<String>, String)>, String> {
    let mut v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut changed = Vec::new();
    if let Some(objs) = v.get_mut("storage_objects").and_then(Value::as_array_mut) {
        for so in objs {
            let ours = so.get("plugin").and_then(Value::as_str) == Some("user")
                && so
                    .get("config")
                    .and_then(Value::as_str)
                    .is_some_and(|c| c.starts_with("sg/"));
            if !ours {
                continue;
            }
            let control = so.get("control").and_then(Value::as_str).unwrap_or("");
            let tokens: Vec<&str> = control.split(',').filter(|t| !t.is_empty()).collect();
            if tokens.iter().any(|t| t.starts_with("nl_reply_supported=")) {
                continue;
            }
            let mut new: Vec<&str> = tokens;
            new.push(SETTING);
            let name = so
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            so["control"] = Value::String(new.join(","));
            changed.push(name);
        }
    }
    if changed.is_empty() {
        return Ok(None);
    }
    let mut out = serde_json::to_string_pretty(&v).expect("a JSON value serializes");
    out.push('\n');
    Ok(Some((changed, out)))
}

/// Prepares one file in place (written to a temporary file beside it and
/// renamed, with its mode). A missing file is nothing to do.
pub fn prepare_file(path: &Path) -> Result<Vec<String>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let Some((changed, new)) = prepare(&text).map_err(|e| format!("{}: {e}", path.display()))?
    else {
        return Ok(Vec::new());
    };
    let tmp = path.with_extension("json.tcmu-sg");
    let err = |e: std::io::Error| format!("{}: {e}", tmp.display());
    std::fs::write(&tmp, new).map_err(err)?;
    if let Ok(m) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, m.permissions()).map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = r#"{
  "fabric_modules": [],
  "storage_objects": [
    {
      "attributes": { "nl_reply_supported": -1, "cmd_time_out": 30 },
      "config": "sg//dev/disk/by-id/wwn-0x5000",
      "control": "max_data_area_mb=8,hw_block_size=512",
      "name": "d0",
      "plugin": "user",
      "size": 268435456
    },
    { "config": "rbd/pool/img", "control": "", "name": "r0", "plugin": "user" },
    { "name": "ram", "plugin": "ramdisk", "size": 1048576 }
  ],
  "targets": []
}"#;

    #[test]
    fn only_sg_backstores_get_the_setting_once() {
        let (changed, out) = prepare(SAVED).unwrap().unwrap();
        assert_eq!(changed, ["d0"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let so = &v["storage_objects"];
        assert_eq!(
            so[0]["control"],
            "max_data_area_mb=8,hw_block_size=512,nl_reply_supported=-1"
        );
        // Another handler's backstore and a ramdisk are left alone, and
        // the order of keys is kept.
        assert_eq!(so[1]["control"], "");
        assert_eq!(so[2].get("control"), None);
        assert!(out.find("\"fabric_modules\"").unwrap() < out.find("\"targets\"").unwrap());
        // Done once: a second pass changes nothing.
        assert_eq!(prepare(&out).unwrap(), None);
        assert!(prepare("{").is_err());
    }

    #[test]
    fn a_file_is_rewritten_in_place_and_a_missing_one_is_nothing_to_do() {
        let dir = std::env::temp_dir().join(format!("tcmu-sg-restore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("saveconfig.json");
        assert_eq!(prepare_file(&f).unwrap(), Vec::<String>::new());
        std::fs::write(&f, SAVED).unwrap();
        assert_eq!(prepare_file(&f).unwrap(), ["d0"]);
        assert!(std::fs::read_to_string(&f).unwrap().contains(SETTING));
        assert_eq!(prepare_file(&f).unwrap(), Vec::<String>::new());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
