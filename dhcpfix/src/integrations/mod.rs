//! Fitting dhcpfix into the hosts people run: libvirt's domain XML
//! ([`libvirt`]), and stderr + syslog reporting for hooks that run
//! unattended ([`syslog`]).

pub mod libvirt;
pub mod syslog;
