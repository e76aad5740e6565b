//! ampoule-vmm: the microVM monitor (KVM, memory, boot, devices).
