/* Minimal benchmark guest: one byte on COM1, then the debug-exit port
 * (QEMU isa-debug-exit / ampoule-vmm), then the i8042 reset line. The same
 * bytes run in 32-bit (PVH entry, as QEMU microvm and ampoule-vmm start an
 * ELF with a PVH note) and in 64-bit mode. */
    .section .text.entry, "ax"
    .code32
    .globl _start64, pvh_start
_start64:
pvh_start:
    .byte 0x66, 0xba, 0xf8, 0x03    /* mov $0x3f8, %dx */
    .byte 0xb0, 0x41                /* mov $'A', %al */
    .byte 0xee                      /* out %al, (%dx) */
    .byte 0xb0, 0x00                /* mov $0, %al */
    .byte 0xe6, 0xf4                /* out %al, $0xf4 */
    .byte 0xb0, 0xfe                /* mov $0xfe, %al */
    .byte 0xe6, 0x64                /* out %al, $0x64 */
1:  .byte 0xf4                      /* hlt */
    .byte 0xeb, 0xfd                /* jmp 1b */

    .section .note.Xen, "a", @note
    .align 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long pvh_start
