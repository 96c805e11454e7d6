//! Fitting dhcpfix into the hosts people run: libvirt's domain XML
//! ([`libvirt`]), the host checks behind `dhcpfix doctor` ([`doctor`]), and
//! stderr + syslog reporting for hooks that run unattended ([`syslog`]).

pub mod doctor;
pub mod libvirt;
pub mod syslog;
