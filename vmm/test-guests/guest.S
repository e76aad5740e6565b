/* Entry code of the ampoule-vmm test guest.
 *
 * Two entries: _start64 (Linux 64-bit boot protocol: long mode, %rsi = zero
 * page) and pvh_start (PVH: 32-bit protected mode, %ebx = hvm_start_info,
 * announced by the Xen ELF note when built with -DPVH). Both load the
 * guest's own GDT, page tables (4 GiB identity map, user-accessible) and TSS
 * (I/O bitmap all zero), then drop to ring 3 with sysretq and call
 * guest_main(proto, info). Ring 0 runs a few dozen instructions only: under
 * PVM it is emulated instruction by instruction.
 */
#define TSS_BASE 0x180000
/* Interrupt stubs at a fixed address so the static IDT can point at them:
 * the stub of vector v is at IRQ_STUBS + 16 * v. */
#define IRQ_STUBS 0x184000

    .section .text.entry, "ax"
    .code64
    .globl _start64
_start64:
    xor %edi, %edi              /* proto 0: Linux 64-bit, %rsi = boot_params */
    jmp common64

    .code32
    .globl pvh_start
pvh_start:
    mov %ebx, %esi              /* hvm_start_info */
    mov $pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax              /* PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx       /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax        /* PG | PE */
    mov %eax, %cr0
    lgdt gdt_ptr
    ljmp $0x08, $pvh64
    .code64
pvh64:
    mov $1, %edi                /* proto 1: PVH, %rsi = start info */

common64:
    lgdt gdt_ptr
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $pml4, %rax
    mov %rax, %cr3
    mov $0x28, %eax
    ltr %ax
    lidt idt_ptr
    /* CPUID from ring 0 (KVM's emulation; ring-3 CPUID may not trap). */
    mov %rsi, %r8
    mov $1, %eax
    xor %ecx, %ecx
    cpuid
    mov %ebx, cpuid_ring0
    mov $0x40000000, %eax
    xor %ecx, %ecx
    cpuid
    mov %eax, cpuid_ring0 + 4
    mov %ebx, cpuid_ring0 + 8
    mov %ecx, cpuid_ring0 + 12
    mov %edx, cpuid_ring0 + 16
    mov %r8, %rsi
    /* STAR: sysret CS = 0x20|3, SS = 0x18|3. */
    mov $0xc0000081, %ecx
    xor %eax, %eax
    mov $0x00100008, %edx
    wrmsr
    mov $0xc0000080, %ecx       /* EFER.SCE */
    rdmsr
    or $1, %eax
    wrmsr
    mov $user_stack_top, %rsp
    mov $user_entry, %rcx
    mov $0x2, %r11d             /* RFLAGS for ring 3 (IF off) */
    sysretq

user_entry:
    mov $0x1b, %eax
    mov %eax, %ds
    mov %eax, %es
    and $-16, %rsp
    call guest_main
1:  jmp 1b

/* Real-mode trampoline for application processors (copied to 0x10000,
 * started with SIPI vector 0x10): counts itself at 0x10ff0 and halts. */
    .code16
    .globl ap_trampoline, ap_trampoline_end
ap_trampoline:
    lock incw %cs:0x0ff0
2:  cli
    hlt
    jmp 2b
ap_trampoline_end:
    .code64

    .section .data
    .globl cpuid_ring0
    .align 16
cpuid_ring0:                    /* leaf 1 EBX, leaf 0x40000000 EAX EBX ECX EDX */
    .fill 5, 4, 0
    .align 16
gdt:
    .quad 0                     /* 0x00 */
    .quad 0x00af9a000000ffff    /* 0x08 kernel code 64 */
    .quad 0x00cf92000000ffff    /* 0x10 kernel data */
    .quad 0x00cff2000000ffff    /* 0x18 user data */
    .quad 0x00affa000000ffff    /* 0x20 user code 64 */
    .quad 0x0000891800002068    /* 0x28 TSS at 0x180000, limit 104 + 8192 */
    .quad 0
gdt_end:
    .align 8
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

/* IDT: exceptions are absent (a fault in the guest ends it with a triple
 * fault) except #UD (6), which the guest uses to ask for interrupts to be
 * enabled; vectors 32-255 count themselves in irq_counts. */
    .align 16
idt:
    .set v, 0
    .rept 256
    .if v == 6 || v >= 32
    .word (IRQ_STUBS + 16 * v) & 0xffff
    .word 0x08
    .byte 0
    .byte 0x8e
    .word ((IRQ_STUBS + 16 * v) >> 16) & 0xffff
    .long 0
    .long 0
    .else
    .quad 0
    .quad 0
    .endif
    .set v, v + 1
    .endr
idt_end:
    .align 8
idt_ptr:
    .word idt_end - idt - 1
    .quad idt

    .section .irqstubs, "ax"
    .set v, 0
    .rept 256
    .balign 16
    .if v == 6
    jmp ud_handler
    .else
    push $v
    jmp irq_common
    .endif
    .set v, v + 1
    .endr
    .balign 16
irq_common:                     /* ring 0, emulated: keep it short */
    push %rax
    mov 8(%rsp), %rax
    lock incl irq_counts(,%rax,4)
    mov $0xfee000b0, %eax       /* local APIC EOI */
    movl $0, (%rax)
    pop %rax
    add $8, %rsp
    iretq
ud_handler:                     /* #UD from ring 3: set IF, skip the ud2 */
    orq $0x200, 16(%rsp)
    addq $2, (%rsp)
    iretq

    .section .data.pagetables, "aw"
    .align 4096
pml4:
    .quad pdpt + 7
    .fill 511, 8, 0
pdpt:
    .quad pd + 7
    .quad pd + 0x1000 + 7
    .quad pd + 0x2000 + 7
    .quad pd + 0x3000 + 7
    .fill 508, 8, 0
pd:
    .set i, 0
    .rept 2048
    .quad (i << 21) | 0x87      /* 2 MiB page, user, writable, present */
    .set i, i + 1
    .endr

    .section .bss
    .align 16
    .space 16384
user_stack_top:
    .space 4096
kstack_top:
    .globl irq_counts
    .align 16
irq_counts:
    .space 1024

    .section .tss, "aw"
tss:
    .long 0
    .quad kstack_top            /* rsp0: stack of the interrupt handlers */
    .fill 88, 1, 0
    .word 0
    .word 104                   /* I/O bitmap offset */
    .fill 8192, 1, 0            /* every port allowed */
    .byte 0xff

#ifdef PVH
    .section .note.Xen, "a", @note
    .align 4
    .long 4                     /* name size */
    .long 4                     /* desc size */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start
#endif
