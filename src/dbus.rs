//! The D-Bus service targetcli talks to.
//!
//! targetcli lists `user:<subtype>` backstores with `GetManagedObjects` on
//! `/org/kernel/TCMUService1` of the system bus name
//! `org.kernel.TCMUService1`, reads each handler's `ConfigDesc` and calls
//! `CheckConfig` before it creates a backstore. tcmu-sg serves exactly that
//! at `/org/kernel/TCMUService1/sg`. When tcmu-runner already owns the name,
//! tcmu-sg instead owns `org.kernel.TCMUService1.HandlerManager1.sg`,
//! serves `CheckConfig` at `/org/kernel/TCMUService1/HandlerManager1/sg` and
//! registers with tcmu-runner's `RegisterHandler`, so both daemons run side
//! by side and targetcli reaches tcmu-sg through tcmu-runner.

use zbus::blocking::{connection, Connection};
use zbus::fdo::{RequestNameFlags, RequestNameReply};

pub const SERVICE: &str = "org.kernel.TCMUService1";
pub const ROOT_PATH: &str = "/org/kernel/TCMUService1";
pub const HANDLER_PATH: &str = "/org/kernel/TCMUService1/sg";
pub const MANAGER_PATH: &str = "/org/kernel/TCMUService1/HandlerManager1";
pub const MANAGER_IFACE: &str = "org.kernel.TCMUService1.HandlerManager1";
pub const EXTERNAL_NAME: &str = "org.kernel.TCMUService1.HandlerManager1.sg";
pub const EXTERNAL_PATH: &str = "/org/kernel/TCMUService1/HandlerManager1/sg";

pub const CONFIG_DESC: &str =
    "sg/<backing SCSI device>[;max_xfer_kb=N][;timeout_s=N][;long_timeout_s=N][;max_inflight=N]\
[;policy=full|standard[+GRANT...]][;readonly=1]: \
passes SCSI commands to the backing device (/dev/sdX, /dev/sgN, /dev/mapper/... or /dev/disk/by-*/...) \
with SG_IO; its status and sense reach the initiator unchanged. policy=standard (the default) \
passes what the device class needs and refuses the rest; grants: firmware, format, security, \
ata, vendor, modeselect, diag, admin, copy";

/// The handler object: property ConfigDesc, method CheckConfig.
pub struct SgHandler;

#[zbus::interface(name = "org.kernel.TCMUService1")]
impl SgHandler {
    #[zbus(property(emits_changed_signal = "const"), name = "ConfigDesc")]
    fn config_desc(&self) -> String {
        CONFIG_DESC.to_string()
    }

    /// `config` is `<subtype>/<cfgstring>` as targetcli passes it.
    #[zbus(name = "CheckConfig")]
    fn check_config(&self, config: &str) -> (bool, String) {
        let r = crate::backend::check_config(config);
        log::info!("CheckConfig({config:?}): {r:?}");
        match r {
            Ok(desc) => (true, desc),
            Err(why) => (false, why),
        }
    }
}

/// How tcmu-sg ended up on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We own org.kernel.TCMUService1.
    Service,
    /// tcmu-runner owns it; we are its external `sg` handler.
    External,
}

/// Connects to the system bus and serves the handler. The returned
/// connection must be kept alive; it answers calls on its own thread.
pub fn serve() -> Result<(Connection, Role), String> {
    let conn = connection::Builder::system()
        .map_err(|e| e.to_string())?
        .build()
        .map_err(|e| format!("system bus: {e}"))?;
    let flags = RequestNameFlags::DoNotQueue.into();
    let owned = match conn.request_name_with_flags(SERVICE, flags) {
        Ok(r) => r == RequestNameReply::PrimaryOwner || r == RequestNameReply::AlreadyOwner,
        Err(zbus::Error::NameTaken) => false,
        Err(e) => return Err(format!("request {SERVICE}: {e}")),
    };
    if owned {
        {
            let os = conn.object_server();
            os.at(ROOT_PATH, zbus::fdo::ObjectManager)
                .map_err(|e| e.to_string())?;
            os.at(HANDLER_PATH, SgHandler).map_err(|e| e.to_string())?;
        }
        return Ok((conn, Role::Service));
    }
    // Someone else (tcmu-runner) is the service: register as its external
    // handler. Our name must exist before RegisterHandler is called.
    conn.object_server()
        .at(EXTERNAL_PATH, SgHandler)
        .map_err(|e| e.to_string())?;
    match conn.request_name_with_flags(EXTERNAL_NAME, flags) {
        Ok(RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner) => {}
        Ok(_) | Err(zbus::Error::NameTaken) => {
            return Err(format!("{EXTERNAL_NAME} is owned by another process"))
        }
        Err(e) => return Err(format!("request {EXTERNAL_NAME}: {e}")),
    }
    let msg = conn
        .call_method(
            Some(SERVICE),
            MANAGER_PATH,
            Some(MANAGER_IFACE),
            "RegisterHandler",
            &("sg", CONFIG_DESC),
        )
        .map_err(|e| format!("RegisterHandler: {e}"))?;
    let (ok, why): (bool, String) = msg.body().deserialize().map_err(|e| e.to_string())?;
    if !ok {
        return Err(format!("RegisterHandler refused: {why}"));
    }
    Ok((conn, Role::External))
}
