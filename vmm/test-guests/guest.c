/* ampoule-vmm test guest: runs in ring 3 (see guest.S) and does what the
 * kernel command line token t=MODE asks, reporting over COM1 and ending the
 * VM through the i8042 reset line. Modes:
 *   hello       print a line and reset
 *   bootparams  report e820, command line and initrd (FNV-1a) and reset
 *   smp         count MP-table CPUs, start the APs (INIT/SIPI) and report
 *   cpuid       report the hypervisor CPUID leaves and the APIC id
 *   wait        poll the i8042 until Ctrl-Alt-Del arrives, then reset
 *   hang        spin forever (only a forced stop ends it)
 *   exitport    write the debug-exit port
 *   fault       fault in ring 3 (no handler): triple fault
 *   irq         virtio-blk used-ring and config-change interrupts delivered
 *               through the IOAPIC to a ring-0 handler
 *   vsock       echo server on vsock port 1024; options, in order:
 *               hostport=P  connect to host port P, exchange a line
 *               stallport=P connect to host port P, send the host's whole
 *                           credit of data, close
 *               txflood=N   post N 64 KiB packets on the TX queue as fast as
 *                           the device returns them
 *   serialflood print bytes=N (default 200000) bytes of numbered lines
 *   blkid       report the first drive's virtio-blk GET_ID answer
 *   fs          virtio-fs: FUSE INIT, LOOKUP/GETATTR/OPEN/READ of file=NAME,
 *               CREATE/WRITE/FLUSH/RELEASE of written-by-guest.txt, the
 *               used-ring interrupt delivered through the IOAPIC, then a
 *               device reset and a GETATTR of the root on the new rings
 *   fsbad       virtio-fs: invalid rings, then bad descriptors on both
 *               queues; reports the device status, then waits as `wait`
 *   net         virtio-net as 10.77.0.2: reports the config space, sends an
 *               ARP request for 10.77.0.1 and an ICMP echo request to it,
 *               reports both replies (answering ARP requests on the way),
 *               then waits as `wait`
 *   netbad      virtio-net: oversized, looping, out-of-memory and other bad
 *               TX chains; bad and 4-byte RX buffers (which the host fills
 *               with frames); waits for Ctrl-Alt-Del, then does the ARP
 *               exchange of `net` and resets
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

extern char ap_trampoline[], ap_trampoline_end[];
extern u32 cpuid_ring0[5];
extern volatile u32 irq_counts[256];

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void pause(void) { __asm__ volatile("pause"); }
static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d) {
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }

static void putc(char c) { outb(0x3f8, (u8)c); }
static void puts(const char *s) { while (*s) putc(*s++); }
static void puthex(u64 v) {
    char buf[17];
    int i = 16;
    buf[16] = 0;
    do { buf[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v && i > 0);
    puts("0x");
    puts(&buf[i]);
}
static void putdec(u64 v) {
    char buf[21];
    int i = 20;
    buf[20] = 0;
    do { buf[--i] = (char)('0' + v % 10); v /= 10; } while (v && i > 0);
    puts(&buf[i]);
}

static void reset(void) {
    outb(0x64, 0xfe);
    for (;;) pause();
}

static int starts_with(const char *s, const char *p) {
    while (*p) if (*s++ != *p++) return 0;
    return 1;
}

/* Returns the value of token `key` (e.g. "t=") in the command line. */
static const char *find_token(const char *cmd, const char *key) {
    const char *p = cmd;
    while (*p) {
        while (*p == ' ') p++;
        if (starts_with(p, key)) { while (*key) { key++; p++; } return p; }
        while (*p && *p != ' ') p++;
    }
    return 0;
}

static int mode_is(const char *v, const char *m) {
    if (!v) return 0;
    while (*m) if (*v++ != *m++) return 0;
    return *v == 0 || *v == ' ';
}

struct bootinfo {
    const char *cmdline;
    u32 e820_n;
    u64 e820[8][3];
    u64 initrd_addr, initrd_size;
};

static void read_bootinfo(long proto, u64 info, struct bootinfo *bi) {
    bi->initrd_addr = bi->initrd_size = 0;
    if (proto == 0) {
        const u8 *bp = (const u8 *)info;
        bi->cmdline = (const char *)(u64)*(const u32 *)(bp + 0x228);
        bi->e820_n = bp[0x1e8];
        if (bi->e820_n > 8) bi->e820_n = 8;
        for (u32 i = 0; i < bi->e820_n; i++) {
            const u8 *e = bp + 0x2d0 + 20 * i;
            bi->e820[i][0] = *(const u64 *)e;
            bi->e820[i][1] = *(const u64 *)(e + 8);
            bi->e820[i][2] = *(const u32 *)(e + 16);
        }
        bi->initrd_addr = *(const u32 *)(bp + 0x218);
        bi->initrd_size = *(const u32 *)(bp + 0x21c);
    } else {
        const u8 *si = (const u8 *)info;
        bi->cmdline = (const char *)*(const u64 *)(si + 24);
        u64 memmap = *(const u64 *)(si + 40);
        bi->e820_n = *(const u32 *)(si + 48);
        if (bi->e820_n > 8) bi->e820_n = 8;
        for (u32 i = 0; i < bi->e820_n; i++) {
            const u8 *e = (const u8 *)(memmap + 24 * i);
            bi->e820[i][0] = *(const u64 *)e;
            bi->e820[i][1] = *(const u64 *)(e + 8);
            bi->e820[i][2] = *(const u32 *)(e + 16);
        }
        if (*(const u32 *)(si + 12) >= 1) {
            const u8 *m = (const u8 *)*(const u64 *)(si + 16);
            bi->initrd_addr = *(const u64 *)m;
            bi->initrd_size = *(const u64 *)(m + 8);
        }
    }
}

static void do_bootparams(struct bootinfo *bi) {
    puts("E820 n=");
    putdec(bi->e820_n);
    putc('\n');
    for (u32 i = 0; i < bi->e820_n; i++) {
        puts("E820 ");
        puthex(bi->e820[i][0]);
        putc(' ');
        puthex(bi->e820[i][1]);
        putc(' ');
        putdec(bi->e820[i][2]);
        putc('\n');
    }
    puts("CMDLINE ");
    puts(bi->cmdline);
    putc('\n');
    u32 h = 2166136261u;
    const u8 *p = (const u8 *)bi->initrd_addr;
    for (u64 i = 0; i < bi->initrd_size; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    puts("INITRD addr=");
    puthex(bi->initrd_addr);
    puts(" size=");
    putdec(bi->initrd_size);
    puts(" fnv=");
    puthex(h);
    putc('\n');
}

static const u8 *find_mpfp(u64 start, u64 len) {
    for (u64 a = start; a + 16 <= start + len; a += 16) {
        const u8 *p = (const u8 *)a;
        if (p[0] == '_' && p[1] == 'M' && p[2] == 'P' && p[3] == '_') {
            u8 sum = 0;
            for (int i = 0; i < 16; i++) sum += p[i];
            if (sum == 0) return p;
        }
    }
    return 0;
}

#define LAPIC 0xfee00000UL
#define AP_COUNTER ((volatile u16 *)0x10ff0UL)

static void do_smp(void) {
    const u8 *fp = find_mpfp(0x9fc00, 0x400);
    if (!fp) fp = find_mpfp(0xf0000, 0x10000);
    if (!fp) { puts("MPTABLE missing\n"); return; }
    const u8 *t = (const u8 *)(u64)*(const u32 *)(fp + 4);
    u16 len = *(const u16 *)(t + 4);
    u8 sum = 0;
    for (u32 i = 0; i < len; i++) sum += t[i];
    u16 count = *(const u16 *)(t + 34);
    const u8 *e = t + 44;
    u32 cpus = 0;
    u8 ids[64];
    for (u32 i = 0; i < count && e < t + len; i++) {
        if (e[0] == 0) {
            if ((e[3] & 1) && cpus < 64) ids[cpus++] = e[1];
            e += 20;
        } else {
            e += 8;
        }
    }
    puts("MPTABLE cpus=");
    putdec(cpus);
    puts(sum == 0 ? " checksum=ok\n" : " checksum=bad\n");

    u8 *dst = (u8 *)0x10000UL;
    for (char *s = ap_trampoline; s < ap_trampoline_end; s++) *dst++ = (u8)*s;
    *AP_COUNTER = 0;
    u32 self = mmio_read32(LAPIC + 0x20) >> 24;
    for (u32 i = 0; i < cpus; i++) {
        if (ids[i] == self) continue;
        mmio_write32(LAPIC + 0x310, (u32)ids[i] << 24);
        mmio_write32(LAPIC + 0x300, 0x00004500); /* INIT */
        mmio_write32(LAPIC + 0x310, (u32)ids[i] << 24);
        mmio_write32(LAPIC + 0x300, 0x00004610); /* SIPI, vector 0x10 */
        mmio_write32(LAPIC + 0x310, (u32)ids[i] << 24);
        mmio_write32(LAPIC + 0x300, 0x00004610);
    }
    for (u64 spin = 0; spin < 2000000000UL && *AP_COUNTER < cpus - 1; spin++) pause();
    puts("SMP up=");
    putdec((u64)*AP_COUNTER + 1);
    putc('\n');
}

static void do_cpuid(void) {
    char sig[13];
    *(u32 *)&sig[0] = cpuid_ring0[2];
    *(u32 *)&sig[4] = cpuid_ring0[3];
    *(u32 *)&sig[8] = cpuid_ring0[4];
    sig[12] = 0;
    for (int i = 0; i < 12; i++) if (sig[i] < 32 || sig[i] > 126) sig[i] = '.';
    puts("CPUID hv_max=");
    puthex(cpuid_ring0[1]);
    puts(" hv_sig=");
    puts(sig);
    puts(" apic_id=");
    putdec(cpuid_ring0[0] >> 24);
    puts(" logical_cpus=");
    putdec((cpuid_ring0[0] >> 16) & 0xff);
    putc('\n');
}


/* ---- virtio-mmio driver (polling, ring 3) ---- */
#define VM_MAGIC 0x000
#define VM_DEVICE_ID 0x008
#define VM_DEV_FEAT 0x010
#define VM_DEV_FEAT_SEL 0x014
#define VM_DRV_FEAT 0x020
#define VM_DRV_FEAT_SEL 0x024
#define VM_QSEL 0x030
#define VM_QNUM_MAX 0x034
#define VM_QNUM 0x038
#define VM_QREADY 0x044
#define VM_QNOTIFY 0x050
#define VM_INT_STATUS 0x060
#define VM_INT_ACK 0x064
#define VM_STATUS 0x070
#define VM_QDESC 0x080
#define VM_QDRIVER 0x090
#define VM_QDEVICE 0x0a0
#define VM_CONFIG_GEN 0x0fc
#define VM_CONFIG 0x100

#define QSZ 256
#define D_NEXT 1
#define D_WRITE 2

struct vdesc { u64 addr; u32 len; u16 flags; u16 next; };
struct vavail { u16 flags; u16 idx; u16 ring[QSZ]; u16 used_event; };
struct vused_elem { u32 id; u32 len; };
struct vused { u16 flags; u16 idx; struct vused_elem ring[QSZ]; u16 avail_event; };

struct vq {
    u64 base;
    u32 index;
    u16 size;
    u16 last_used;
    struct vdesc *desc;
    struct vavail *avail;
    struct vused *used;
};

#define MAX_QUEUES 8
static u8 qmem[MAX_QUEUES][3][4096] __attribute__((aligned(4096)));
static int qmem_next;

static u32 vr(u64 base, u64 off) { return mmio_read32(base + off); }
static void vw(u64 base, u64 off, u32 v) { mmio_write32(base + off, v); }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

static u64 virtio_bases[16];
static u32 virtio_irqs[16];
static int virtio_count;

static u64 parse_hex(const char *p) {
    u64 v = 0;
    if (p[0] == '0' && p[1] == 'x') p += 2;
    for (;;) {
        char c = *p++;
        if (c >= '0' && c <= '9') v = v * 16 + (u64)(c - '0');
        else if (c >= 'a' && c <= 'f') v = v * 16 + (u64)(c - 'a' + 10);
        else return v;
    }
}

static void find_virtio(const char *cmd) {
    const char *p = cmd;
    virtio_count = 0;
    while (*p && virtio_count < 16) {
        while (*p == ' ') p++;
        if (starts_with(p, "virtio_mmio.device=")) {
            const char *q = p;
            while (*q && *q != '@' && *q != ' ') q++;
            if (*q == '@') {
                const char *r = q + 1;
                while (*r && *r != ':' && *r != ' ') r++;
                u32 irq = 0;
                if (*r == ':')
                    for (r++; *r >= '0' && *r <= '9'; r++) irq = irq * 10 + (u32)(*r - '0');
                virtio_irqs[virtio_count] = irq;
                virtio_bases[virtio_count++] = parse_hex(q + 1);
            }
        }
        while (*p && *p != ' ') p++;
    }
}

/* n-th device (in command-line order) with `id`, or 0. */
static u64 virtio_find(u32 id, int n) {
    for (int i = 0; i < virtio_count; i++) {
        u64 b = virtio_bases[i];
        if (vr(b, VM_MAGIC) == 0x74726976 && vr(b, VM_DEVICE_ID) == id) {
            if (n-- == 0) return b;
        }
    }
    return 0;
}

static int vq_setup(struct vq *q, u64 base, u32 index) {
    if (qmem_next >= MAX_QUEUES) return -1;
    u8 (*m)[4096] = qmem[qmem_next++];
    vw(base, VM_QSEL, index);
    u32 max = vr(base, VM_QNUM_MAX);
    if (max == 0) return -1;
    q->base = base;
    q->index = index;
    q->size = max < QSZ ? (u16)max : QSZ;
    q->last_used = 0;
    q->desc = (struct vdesc *)m[0];
    q->avail = (struct vavail *)m[1];
    q->used = (struct vused *)m[2];
    for (int i = 0; i < 4096; i++) { m[0][i] = 0; m[1][i] = 0; m[2][i] = 0; }
    vw(base, VM_QNUM, q->size);
    vw(base, VM_QDESC, (u32)(u64)q->desc);
    vw(base, VM_QDESC + 4, 0);
    vw(base, VM_QDRIVER, (u32)(u64)q->avail);
    vw(base, VM_QDRIVER + 4, 0);
    vw(base, VM_QDEVICE, (u32)(u64)q->used);
    vw(base, VM_QDEVICE + 4, 0);
    vw(base, VM_QREADY, 1);
    return 0;
}

/* Resets, negotiates (VERSION_1 plus `want` of the low 32 bits), sets up
 * `nq` queues and sets DRIVER_OK. Returns the device's low feature bits. */
static int virtio_init(u64 base, u32 want, struct vq *qs, int nq, u32 *features) {
    vw(base, VM_STATUS, 0);
    vw(base, VM_STATUS, 1);
    vw(base, VM_STATUS, 3);
    vw(base, VM_DEV_FEAT_SEL, 0);
    u32 lo = vr(base, VM_DEV_FEAT);
    vw(base, VM_DRV_FEAT_SEL, 1);
    vw(base, VM_DRV_FEAT, 1);
    vw(base, VM_DRV_FEAT_SEL, 0);
    vw(base, VM_DRV_FEAT, lo & want);
    vw(base, VM_STATUS, 3 | 8);
    if (!(vr(base, VM_STATUS) & 8)) return -1;
    for (int i = 0; i < nq; i++)
        if (vq_setup(&qs[i], base, (u32)i)) return -1;
    vw(base, VM_STATUS, 3 | 8 | 4);
    if (features) *features = lo;
    return 0;
}

/* Puts descriptor chain `head` in the available ring and notifies. */
static void vq_submit(struct vq *q, u16 head) {
    q->avail->ring[q->avail->idx % q->size] = head;
    barrier();
    q->avail->idx++;
    barrier();
    vw(q->base, VM_QNOTIFY, q->index);
}

static int vq_has_used(struct vq *q) {
    barrier();
    return *(volatile u16 *)&q->used->idx != q->last_used;
}

/* Waits for the next used element; returns 0 and its length, -1 on timeout. */
static int vq_wait_used(struct vq *q, u32 *len) {
    for (u64 spin = 0; spin < 400000000UL; spin++) {
        barrier();
        if (*(volatile u16 *)&q->used->idx != q->last_used) {
            struct vused_elem *e = &q->used->ring[q->last_used % q->size];
            if (len) *len = e->len;
            q->last_used++;
            return 0;
        }
        pause();
    }
    return -1;
}


/* ---- virtio-blk ---- */
struct blk_req { u32 type; u32 reserved; u64 sector; };
static struct blk_req breq;
static volatile u8 bstatus;
static u8 blkbuf[8192] __attribute__((aligned(4096)));

static int blk_io(struct vq *q, u32 type, u64 sector, u8 *buf, u32 len) {
    breq.type = type;
    breq.reserved = 0;
    breq.sector = sector;
    bstatus = 0xff;
    q->desc[0] = (struct vdesc){(u64)&breq, 16, D_NEXT, 1};
    q->desc[1] = (struct vdesc){(u64)buf, len, (u16)(D_NEXT | (type == 0 || type == 8 ? D_WRITE : 0)), 2};
    q->desc[2] = (struct vdesc){(u64)&bstatus, 1, D_WRITE, 0};
    vq_submit(q, 0);
    if (vq_wait_used(q, 0)) return -2;
    return bstatus;
}

static u32 fnv(const u8 *p, u64 n) {
    u32 h = 2166136261u;
    for (u64 i = 0; i < n; i++) { h ^= p[i]; h *= 16777619u; }
    return h;
}

static u64 blk_capacity(u64 base) {
    return (u64)vr(base, VM_CONFIG) | ((u64)vr(base, VM_CONFIG + 4) << 32);
}

static void do_blk(void) {
    struct vq q[3];
    u64 b[3];
    u32 feat[3];
    for (int i = 0; i < 3; i++) {
        b[i] = virtio_find(2, i);
        if (!b[i] || virtio_init(b[i], 1u << 5, &q[i], 1, &feat[i])) {
            puts("BLK init failed ");
            putdec((u64)i);
            putc('\n');
            return;
        }
    }
    /* Drive 0: read 8 sectors, write sector 1. */
    int st = blk_io(&q[0], 0, 0, blkbuf, 4096);
    puts("BLK0 cap=");
    putdec(blk_capacity(b[0]));
    puts(" read=");
    putdec((u64)st);
    puts(" fnv=");
    puthex(fnv(blkbuf, 4096));
    puts(" intr=");
    putdec(vr(b[0], VM_INT_STATUS) & 1);
    putc('\n');
    vw(b[0], VM_INT_ACK, 1);
    for (int i = 0; i < 512; i++) blkbuf[i] = (u8)"AMPOULE-WROTE-THIS "[i % 19];
    st = blk_io(&q[0], 1, 1, blkbuf, 512);
    puts("BLK0 write=");
    putdec((u64)st);
    putc('\n');
    st = blk_io(&q[0], 0, blk_capacity(b[0]), blkbuf, 512);
    puts("BLK0 read-past-end=");
    putdec((u64)st);
    putc('\n');
    /* Drive 1: read-only. */
    st = blk_io(&q[1], 1, 0, blkbuf, 512);
    puts("BLK1 ro_feature=");
    putdec((feat[1] >> 5) & 1);
    puts(" write=");
    putdec((u64)st);
    putc('\n');
    /* Drive 2: empty slot, filled through the control socket. */
    puts("BLK2 cap=");
    putdec(blk_capacity(b[2]));
    putc('\n');
    u32 gen = vr(b[2], VM_CONFIG_GEN);
    puts("SLOT-WAIT\n");
    u64 spin;
    for (spin = 0; spin < 4000000000UL; spin++) {
        if (vr(b[2], VM_INT_STATUS) & 2) break;
        pause();
    }
    vw(b[2], VM_INT_ACK, 2);
    u64 cap = blk_capacity(b[2]);
    st = blk_io(&q[2], 0, 0, blkbuf, 1024);
    puts("BLK2 config_change=1 gen_changed=");
    putdec(vr(b[2], VM_CONFIG_GEN) != gen);
    puts(" cap=");
    putdec(cap);
    puts(" read=");
    putdec((u64)st);
    puts(" fnv=");
    puthex(fnv(blkbuf, 1024));
    putc('\n');
}

/* ---- virtio-vsock (echo server on port 1024, client to the host) ---- */
struct vsock_hdr {
    u64 src_cid, dst_cid;
    u32 src_port, dst_port, len;
    u16 type, op;
    u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

#define VS_REQUEST 1
#define VS_RESPONSE 2
#define VS_RST 3
#define VS_SHUTDOWN 4
#define VS_RW 5
#define VS_CREDIT_UPDATE 6
#define VS_CREDIT_REQUEST 7
#define RXBUF 4096
#define NRX 32
#define PEND 16384
#define MAXC 8

static u8 vs_rx[NRX][sizeof(struct vsock_hdr) + RXBUF] __attribute__((aligned(64)));
static u8 vs_tx[sizeof(struct vsock_hdr) + RXBUF] __attribute__((aligned(64)));
static struct vq vsq[3];

struct vconn {
    int used;
    u32 host_port, guest_port;
    u32 peer_buf_alloc, peer_fwd_cnt;
    u32 tx_cnt;   /* bytes sent to the host */
    u32 fwd_cnt;  /* bytes consumed (echoed) */
    u32 head, tail; /* pending echo data ring */
    u8 buf[PEND];
};
static struct vconn vconns[MAXC];

static void vs_post_rx(u16 i) {
    vsq[0].desc[i] = (struct vdesc){(u64)vs_rx[i], sizeof(vs_rx[i]), D_WRITE, 0};
    vsq[0].avail->ring[vsq[0].avail->idx % vsq[0].size] = i;
    barrier();
    vsq[0].avail->idx++;
}

static void vs_send(u32 src_port, u32 dst_port, u16 op, u32 flags, const u8 *data, u32 len,
                    u32 fwd_cnt) {
    struct vsock_hdr *h = (struct vsock_hdr *)vs_tx;
    h->src_cid = 3;
    h->dst_cid = 2;
    h->src_port = src_port;
    h->dst_port = dst_port;
    h->len = len;
    h->type = 1;
    h->op = op;
    h->flags = flags;
    h->buf_alloc = PEND;
    h->fwd_cnt = fwd_cnt;
    for (u32 i = 0; i < len; i++) vs_tx[sizeof(*h) + i] = data[i];
    vsq[1].desc[0] = (struct vdesc){(u64)vs_tx, (u32)(sizeof(*h) + len), 0, 0};
    vq_submit(&vsq[1], 0);
    vq_wait_used(&vsq[1], 0);
}

static struct vconn *vc_find(u32 host_port, u32 guest_port) {
    for (int i = 0; i < MAXC; i++)
        if (vconns[i].used && vconns[i].host_port == host_port && vconns[i].guest_port == guest_port)
            return &vconns[i];
    return 0;
}

static struct vconn *vc_new(u32 host_port, u32 guest_port) {
    for (int i = 0; i < MAXC; i++) {
        if (!vconns[i].used) {
            struct vconn *c = &vconns[i];
            c->used = 1;
            c->host_port = host_port;
            c->guest_port = guest_port;
            c->peer_buf_alloc = 0;
            c->peer_fwd_cnt = 0;
            c->tx_cnt = c->fwd_cnt = 0;
            c->head = c->tail = 0;
            return c;
        }
    }
    return 0;
}

static int vs_init(void) {
    u64 b = virtio_find(19, 0);
    if (!b || virtio_init(b, 0, vsq, 3, 0)) return -1;
    u32 cid = vr(b, VM_CONFIG);
    puts("VSOCK cid=");
    putdec(cid);
    putc('\n');
    for (u16 i = 0; i < NRX; i++) vs_post_rx(i);
    vw(b, VM_QNOTIFY, 0);
    return 0;
}

/* Handles one received packet; returns its op. Connect replies for our own
 * client connection are reported through *client_state. */
static int client_state; /* 0 none, 1 connected, -1 refused */
static u32 client_peer_buf_alloc;
static u32 client_port = 5000;
static u8 client_reply[64];
static u32 client_reply_len;

static void vs_handle(struct vsock_hdr *h, u8 *data) {
    struct vconn *c = vc_find(h->src_port, h->dst_port);
    if (c) {
        c->peer_buf_alloc = h->buf_alloc;
        c->peer_fwd_cnt = h->fwd_cnt;
    }
    if (h->dst_port == client_port && !c) {
        if (h->op == VS_RESPONSE) { client_state = 1; client_peer_buf_alloc = h->buf_alloc; }
        else if (h->op == VS_RST) client_state = -1;
        else if (h->op == VS_RW) {
            for (u32 i = 0; i < h->len && client_reply_len < sizeof(client_reply) - 1; i++)
                client_reply[client_reply_len++] = data[i];
        } else if (h->op == VS_SHUTDOWN) {
            vs_send(client_port, h->src_port, VS_RST, 0, 0, 0, 0);
            client_state = 2;
        }
        return;
    }
    switch (h->op) {
    case VS_REQUEST:
        if (h->dst_port == 1024 && !c && (c = vc_new(h->src_port, h->dst_port))) {
            c->peer_buf_alloc = h->buf_alloc;
            c->peer_fwd_cnt = h->fwd_cnt;
            vs_send(h->dst_port, h->src_port, VS_RESPONSE, 0, 0, 0, 0);
        } else {
            vs_send(h->dst_port, h->src_port, VS_RST, 0, 0, 0, 0);
        }
        break;
    case VS_RW:
        if (!c) { vs_send(h->dst_port, h->src_port, VS_RST, 0, 0, 0, 0); break; }
        for (u32 i = 0; i < h->len; i++) { c->buf[c->tail % PEND] = data[i]; c->tail++; }
        break;
    case VS_SHUTDOWN:
        if (c) {
            vs_send(h->dst_port, h->src_port, VS_RST, 0, 0, 0, c->fwd_cnt);
            c->used = 0;
        }
        break;
    case VS_RST:
        if (c) c->used = 0;
        break;
    case VS_CREDIT_REQUEST:
        if (c) vs_send(h->dst_port, h->src_port, VS_CREDIT_UPDATE, 0, 0, 0, c->fwd_cnt);
        break;
    default:
        break;
    }
}

/* Receives whatever is in the RX used ring; returns how many packets. */
static int vs_poll_rx(void) {
    int n = 0;
    while (vq_has_used(&vsq[0])) {
        struct vused_elem *e = &vsq[0].used->ring[vsq[0].last_used % vsq[0].size];
        u16 id = (u16)e->id;
        vsq[0].last_used++;
        if (id < NRX) {
            struct vsock_hdr *h = (struct vsock_hdr *)vs_rx[id];
            if (h->len > RXBUF) h->len = RXBUF;
            vs_handle(h, vs_rx[id] + sizeof(*h));
            vs_post_rx(id);
        }
        n++;
    }
    if (n) vw(vsq[0].base, VM_QNOTIFY, 0);
    return n;
}

/* Echoes pending data within the host's credit. */
static int vs_pump(void) {
    int sent = 0;
    for (int i = 0; i < MAXC; i++) {
        struct vconn *c = &vconns[i];
        if (!c->used) continue;
        while (c->tail != c->head) {
            u32 credit = c->peer_buf_alloc - (c->tx_cnt - c->peer_fwd_cnt);
            u32 n = c->tail - c->head;
            if (n > RXBUF) n = RXBUF;
            if (n > credit) n = credit;
            u32 contiguous = PEND - (c->head % PEND);
            if (n > contiguous) n = contiguous;
            if (n == 0) break;
            c->fwd_cnt += n;
            vs_send(c->guest_port, c->host_port, VS_RW, 0, c->buf + (c->head % PEND), n, c->fwd_cnt);
            c->head += n;
            c->tx_cnt += n;
            sent++;
        }
    }
    return sent;
}

static void vs_connect_host(u32 port) {
    client_state = 0;
    vs_send(client_port, port, VS_REQUEST, 0, 0, 0, 0);
    for (u64 spin = 0; spin < 400000000UL && client_state == 0; spin++) {
        if (!vs_poll_rx()) pause();
    }
    puts(client_state == 1 ? "VSOCK connect ok\n" : "VSOCK connect refused\n");
    if (client_state != 1) return;
    const char *msg = "hello from the guest over vsock\n";
    u32 len = 0;
    while (msg[len]) len++;
    vs_send(client_port, port, VS_RW, 0, (const u8 *)msg, len, 0);
    /* Wait for the host's answer line, then close. */
    for (u64 spin = 0; spin < 400000000UL; spin++) {
        if (client_reply_len && client_reply[client_reply_len - 1] == '\n') break;
        if (!vs_poll_rx()) pause();
    }
    client_reply[client_reply_len] = 0;
    puts("VSOCK host said: ");
    puts((const char *)client_reply);
    vs_send(client_port, port, VS_SHUTDOWN, 3, 0, 0, client_reply_len);
    client_port++;
}

static u32 parse_dec(const char *p) {
    u32 v = 0;
    for (; *p >= '0' && *p <= '9'; p++) v = v * 10 + (u32)(*p - '0');
    return v;
}

/* Connects to host port `port`, sends as much as the host's credit allows
 * (byte i is i*7+3) and closes with SHUTDOWN, without waiting for the host
 * to read anything. */
static void vs_stall(u32 port) {
    client_state = 0;
    client_peer_buf_alloc = 0;
    vs_send(client_port, port, VS_REQUEST, 0, 0, 0, 0);
    for (u64 spin = 0; spin < 400000000UL && client_state == 0; spin++) {
        if (!vs_poll_rx()) pause();
    }
    if (client_state != 1) { puts("VSOCK stall connect refused\n"); return; }
    u32 total = client_peer_buf_alloc;
    static u8 chunk[RXBUF];
    u32 sent = 0;
    while (sent < total) {
        u32 n = total - sent;
        if (n > RXBUF) n = RXBUF;
        for (u32 i = 0; i < n; i++) chunk[i] = (u8)((sent + i) * 7 + 3);
        vs_send(client_port, port, VS_RW, 0, chunk, n, 0);
        sent += n;
    }
    vs_send(client_port, port, VS_SHUTDOWN, 3, 0, 0, 0);
    puts("VSOCK stall sent=");
    putdec(sent);
    putc('\n');
    client_port++;
}

/* Posts `n` packets of 64 KiB of data (for a connection that does not
 * exist) on the TX queue, re-posting each descriptor chain as soon as the
 * device returns it. It notifies only when the device may have stopped
 * (nothing in flight), so that it posts faster than the device pops. */
static u8 vs_flood_hdr[sizeof(struct vsock_hdr)] __attribute__((aligned(64)));
#define FLOOD_DATA 0x200000UL
#define FLOOD_LEN 65536u
static void vs_flood(u32 n) {
    struct vq *q = &vsq[1];
    struct vsock_hdr *h = (struct vsock_hdr *)vs_flood_hdr;
    h->src_cid = 3; h->dst_cid = 2; h->src_port = 9000; h->dst_port = 9001;
    h->len = FLOOD_LEN; h->type = 1; h->op = VS_RW; h->flags = 0;
    h->buf_alloc = PEND; h->fwd_cnt = 0;
    u16 chains = q->size / 2;
    for (u16 i = 0; i < chains; i++) {
        q->desc[2 * i] = (struct vdesc){(u64)vs_flood_hdr, sizeof(*h), D_NEXT, (u16)(2 * i + 1)};
        q->desc[2 * i + 1] = (struct vdesc){FLOOD_DATA, FLOOD_LEN, 0, 0};
    }
    u32 posted = 0;
    int kicked = 0;
    while (posted < n) {
        barrier();
        u16 in_flight = (u16)(q->avail->idx - *(volatile u16 *)&q->used->idx);
        if (in_flight >= chains) {
            /* Full: make sure the device knows of everything posted before
             * waiting for it (it may have gone idle between our last
             * notification and the chains posted since), once per wait. */
            if (!kicked) { vw(q->base, VM_QNOTIFY, q->index); kicked = 1; }
            pause();
            continue;
        }
        kicked = 0;
        q->avail->ring[q->avail->idx % q->size] = (u16)(2 * (posted % chains));
        barrier();
        q->avail->idx++;
        posted++;
        if (in_flight == 0 || posted % 4096 == 0) vw(q->base, VM_QNOTIFY, q->index);
    }
    vw(q->base, VM_QNOTIFY, q->index);
    for (u64 spin = 0; spin < 4000000000UL; spin++) {
        barrier();
        if (*(volatile u16 *)&q->used->idx == q->avail->idx) break;
        pause();
    }
    q->last_used = *(volatile u16 *)&q->used->idx;
    puts("VSOCK flood done n=");
    putdec(posted);
    putc('\n');
}

static void do_vsock(const char *cmd) {
    if (vs_init()) { puts("VSOCK init failed\n"); return; }
    const char *p = cmd;
    while (*p) {
        while (*p == ' ') p++;
        if (starts_with(p, "hostport=")) {
            u32 port = 0;
            for (const char *q = p + 9; *q >= '0' && *q <= '9'; q++) port = port * 10 + (u32)(*q - '0');
            vs_connect_host(port);
        } else if (starts_with(p, "stallport=")) {
            vs_stall(parse_dec(p + 10));
        } else if (starts_with(p, "txflood=")) {
            vs_flood(parse_dec(p + 8));
        }
        while (*p && *p != ' ') p++;
    }
    puts("VSOCK-READY\n");
    for (;;) {
        int busy = vs_poll_rx();
        busy += vs_pump();
        if (inb(0x64) & 1) {
            if (inb(0x60) == 0x71) break;
        }
        if (!busy) pause();
    }
}

/* ---- hostile guest: malformed requests everywhere, then normal service ---- */
static void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }

static void do_hostile(const char *cmd) {
    u64 b = virtio_find(2, 0);
    if (!b) { puts("HOSTILE no blk\n"); return; }
    /* Writes to read-only registers and unknown offsets, odd sizes. */
    vw(b, VM_MAGIC, 0);
    vw(b, VM_DEVICE_ID, 99);
    vw(b, VM_QNUM_MAX, 0xffff);
    vw(b, VM_INT_STATUS, 0xffffffff);
    vw(b, 0x0f0, 1);
    vw(b, 0x0fd, 1);
    mmio_write8(b + VM_STATUS, 0xff);
    vw(b, VM_QNOTIFY, 99);
    puts("HOSTILE ro-registers magic=");
    puthex(vr(b, VM_MAGIC));
    puts(" id=");
    putdec(vr(b, VM_DEVICE_ID));
    putc('\n');
    /* Queue size beyond the maximum and invalid ring addresses. */
    vw(b, VM_STATUS, 0);
    vw(b, VM_STATUS, 1);
    vw(b, VM_STATUS, 3);
    vw(b, VM_DRV_FEAT_SEL, 1);
    vw(b, VM_DRV_FEAT, 1);
    vw(b, VM_STATUS, 3 | 8);
    vw(b, VM_QSEL, 7);               /* no such queue */
    vw(b, VM_QNUM, 4);
    vw(b, VM_QREADY, 1);
    vw(b, VM_QSEL, 0);
    vw(b, VM_QNUM, 60000);           /* too big */
    vw(b, VM_QNUM, 3);               /* not a power of two */
    vw(b, VM_QDESC, 0xfffff000);
    vw(b, VM_QDESC + 4, 0xffff);
    vw(b, VM_QREADY, 1);
    vw(b, VM_STATUS, 3 | 8 | 4);
    puts("HOSTILE bad-rings status=");
    puthex(vr(b, VM_STATUS));
    putc('\n');
    /* Proper setup, then malformed chains. */
    struct vq q;
    qmem_next = 0;
    if (virtio_init(b, 0, &q, 1, 0)) { puts("HOSTILE reinit failed\n"); return; }
    breq.type = 0; breq.sector = 0; bstatus = 0xff;
    /* 1: data descriptor outside guest memory. */
    q.desc[0] = (struct vdesc){(u64)&breq, 16, D_NEXT, 1};
    q.desc[1] = (struct vdesc){0x7fff00000000UL, 4096, D_NEXT | D_WRITE, 2};
    q.desc[2] = (struct vdesc){(u64)&bstatus, 1, D_WRITE, 0};
    vq_submit(&q, 0);
    vq_wait_used(&q, 0);
    /* 2: huge length. */
    q.desc[1] = (struct vdesc){(u64)blkbuf, 0xffffffffu, D_NEXT | D_WRITE, 2};
    vq_submit(&q, 0);
    vq_wait_used(&q, 0);
    /* 3: a chain that loops on itself. */
    q.desc[3] = (struct vdesc){(u64)&breq, 16, D_NEXT, 3};
    vq_submit(&q, 3);
    vq_wait_used(&q, 0);
    /* 4: head index out of range, next index out of range. */
    q.desc[4] = (struct vdesc){(u64)&breq, 16, D_NEXT, 60000};
    vq_submit(&q, 4);
    vq_wait_used(&q, 0);
    q.avail->ring[q.avail->idx % q.size] = 50000;
    barrier();
    q.avail->idx++;
    barrier();
    vw(q.base, VM_QNOTIFY, 0);
    /* 5: no status descriptor, 6: header too short. */
    q.desc[5] = (struct vdesc){(u64)&breq, 16, 0, 0};
    vq_submit(&q, 5);
    q.desc[6] = (struct vdesc){(u64)&breq, 4, D_NEXT, 7};
    q.desc[7] = (struct vdesc){(u64)&bstatus, 1, D_WRITE, 0};
    vq_submit(&q, 6);
    /* A valid request still works. */
    for (u64 spin = 0; spin < 1000000; spin++) pause();
    q.last_used = q.used->idx;
    int st = blk_io(&q, 0, 0, blkbuf, 512);
    puts("HOSTILE blk-after read=");
    putdec((u64)st);
    puts(" fnv=");
    puthex(fnv(blkbuf, 512));
    putc('\n');

    /* vsock: oversized, wrong-cid, unknown-op and write-only packets. */
    if (vs_init()) { puts("HOSTILE no vsock\n"); return; }
    struct vsock_hdr *h = (struct vsock_hdr *)vs_tx;
    h->src_cid = 3; h->dst_cid = 2; h->src_port = 7000; h->dst_port = 7001;
    h->len = 1u << 30; h->type = 1; h->op = VS_RW; h->flags = 0; h->buf_alloc = 0; h->fwd_cnt = 0;
    vsq[1].desc[0] = (struct vdesc){(u64)vs_tx, sizeof(*h), D_NEXT, 1};
    vsq[1].desc[1] = (struct vdesc){(u64)blkbuf, 8192, 0, 0};
    vq_submit(&vsq[1], 0);
    vq_wait_used(&vsq[1], 0);
    h->len = 0; h->src_cid = 77; h->op = VS_REQUEST;
    vsq[1].desc[0] = (struct vdesc){(u64)vs_tx, sizeof(*h), 0, 0};
    vq_submit(&vsq[1], 0);
    vq_wait_used(&vsq[1], 0);
    h->src_cid = 3; h->op = 200;
    vq_submit(&vsq[1], 0);
    vq_wait_used(&vsq[1], 0);
    h->op = VS_RW; h->type = 9;
    vq_submit(&vsq[1], 0);
    vq_wait_used(&vsq[1], 0);
    vsq[1].desc[0] = (struct vdesc){(u64)vs_tx, 8, D_WRITE, 0};
    vq_submit(&vsq[1], 0);
    vq_wait_used(&vsq[1], 0);
    /* RST replies may be queued for the refused packets: drain them. */
    for (u64 spin = 0; spin < 2000000; spin++) { if (!vs_poll_rx()) pause(); }
    puts("HOSTILE-DONE\n");
    (void)cmd;
    puts("VSOCK-READY\n");
    for (;;) {
        int busy = vs_poll_rx();
        busy += vs_pump();
        if (inb(0x64) & 1) {
            if (inb(0x60) == 0x71) break;
        }
        if (!busy) pause();
    }
}

/* ---- interrupts: IOAPIC -> LAPIC -> ring-0 stub counting the vector ---- */
static u32 virtio_irq_of(u64 base) {
    for (int i = 0; i < virtio_count; i++)
        if (virtio_bases[i] == base) return virtio_irqs[i];
    return 0;
}

static void ioapic_route(u32 pin, u32 vector) {
    mmio_write32(0xfec00000UL, 0x10 + 2 * pin);
    mmio_write32(0xfec00010UL, vector);     /* fixed, edge, unmasked */
    mmio_write32(0xfec00000UL, 0x11 + 2 * pin);
    mmio_write32(0xfec00010UL, 0);          /* destination APIC 0 */
}

static void enable_interrupts(void) {
    outb(0x21, 0xff);                        /* mask both 8259s */
    outb(0xa1, 0xff);
    mmio_write32(LAPIC + 0xf0, 0x1ff);       /* LAPIC on, spurious vector 0xff */
    __asm__ volatile("ud2" ::: "memory");    /* #UD handler sets IF */
}

static int wait_irq(u32 vector, u32 above) {
    for (u64 spin = 0; spin < 4000000000UL; spin++) {
        if (irq_counts[vector] > above) return 0;
        pause();
    }
    return -1;
}

static void do_irq(void) {
    struct vq q[2];
    u64 b[2];
    for (int i = 0; i < 2; i++) {
        b[i] = virtio_find(2, i);
        if (!b[i]) { puts("IRQ no blk\n"); return; }
    }
    u32 v0 = 0x30 + virtio_irq_of(b[0]);
    u32 v1 = 0x30 + virtio_irq_of(b[1]);
    ioapic_route(v0 - 0x30, v0);
    ioapic_route(v1 - 0x30, v1);
    enable_interrupts();
    for (int i = 0; i < 2; i++) {
        if (virtio_init(b[i], 0, &q[i], 1, 0)) { puts("IRQ init failed\n"); return; }
    }
    int st = blk_io(&q[0], 0, 0, blkbuf, 512);
    int got = wait_irq(v0, 0);
    puts("IRQ used-ring read=");
    putdec((u64)st);
    puts(got == 0 ? " delivered=1 count=" : " delivered=0 count=");
    putdec(irq_counts[v0]);
    putc('\n');
    vw(b[0], VM_INT_ACK, vr(b[0], VM_INT_STATUS));
    u32 before = irq_counts[v1];
    puts("IRQ-WAIT\n");
    got = wait_irq(v1, before);
    u32 isr = vr(b[1], VM_INT_STATUS);
    vw(b[1], VM_INT_ACK, isr);
    puts(got == 0 ? "IRQ config-change delivered=1 status=" : "IRQ config-change delivered=0 status=");
    putdec(isr);
    puts(" cap=");
    putdec(blk_capacity(b[1]));
    putc('\n');
}

/* ---- virtio-fs: FUSE over the request queue (include/uapi/linux/fuse.h) ---- */
#define FUSE_LOOKUP 1
#define FUSE_GETATTR 3
#define FUSE_OPEN 14
#define FUSE_READ 15
#define FUSE_WRITE 16
#define FUSE_RELEASE 18
#define FUSE_FLUSH 25
#define FUSE_INIT 26
#define FUSE_CREATE 35
#define FUSE_ROOT 1

struct fuse_in_header { u32 len, opcode; u64 unique, nodeid; u32 uid, gid, pid; u16 total_extlen, padding; };
struct fuse_out_header { u32 len; int error; u64 unique; };
struct fuse_attr {
    u64 ino, size, blocks, atime, mtime, ctime;
    u32 atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags;
};
struct fuse_entry_out {
    u64 nodeid, generation, entry_valid, attr_valid;
    u32 entry_valid_nsec, attr_valid_nsec;
    struct fuse_attr attr;
};
struct fuse_attr_out { u64 attr_valid; u32 attr_valid_nsec, dummy; struct fuse_attr attr; };
struct fuse_open_out { u64 fh; u32 open_flags; int backing_id; };
struct fuse_init_in { u32 major, minor, max_readahead, flags; };
struct fuse_init_out { u32 major, minor, max_readahead, flags; };
struct fuse_getattr_in { u32 getattr_flags, dummy; u64 fh; };
struct fuse_open_in { u32 flags, open_flags; };
struct fuse_rw_in { u64 fh, offset; u32 size, rw_flags; u64 lock_owner; u32 flags, padding; };
struct fuse_write_out { u32 size, padding; };
struct fuse_create_in { u32 flags, mode, umask, open_flags; };
struct fuse_release_in { u64 fh; u32 flags, release_flags; u64 lock_owner; };
struct fuse_flush_in { u64 fh; u32 unused, padding; u64 lock_owner; };

#define FS_BUF 8192
static u8 fs_in[FS_BUF] __attribute__((aligned(4096)));
static u8 fs_out[FS_BUF] __attribute__((aligned(4096)));
static struct vq fsq[2];
static u64 fs_unique;

static void copy(void *dst, const void *src, u32 n) {
    for (u32 i = 0; i < n; i++) ((u8 *)dst)[i] = ((const u8 *)src)[i];
}
static u32 slen(const char *s) { u32 n = 0; while (s[n]) n++; return n; }

/* Waits at most `spins` for the next used element of `q`. */
static int vq_wait_used_for(struct vq *q, u32 *len, u64 spins) {
    for (u64 spin = 0; spin < spins; spin++) {
        barrier();
        if (*(volatile u16 *)&q->used->idx != q->last_used) {
            struct vused_elem *e = &q->used->ring[q->last_used % q->size];
            if (len) *len = e->len;
            q->last_used++;
            return 0;
        }
        pause();
    }
    return -1;
}

/* One FUSE request on the request queue: in header + arg + data in one
 * device-readable descriptor, out header + reply in one device-writable
 * one. Returns the reply's error (0 ok), -1000 on timeout, -1001 on a
 * reply that does not match; *out_len is the reply's length. */
static int fuse_call(u32 opcode, u64 nodeid, const void *arg, u32 arglen,
                     const void *data, u32 datalen, u32 outcap, u32 *out_len) {
    struct fuse_in_header *h = (struct fuse_in_header *)fs_in;
    u32 len = (u32)sizeof(*h) + arglen + datalen;
    if (len > FS_BUF || outcap > FS_BUF) return -1001;
    h->len = len;
    h->opcode = opcode;
    h->unique = ++fs_unique;
    h->nodeid = nodeid;
    h->uid = h->gid = h->pid = 0;
    h->total_extlen = h->padding = 0;
    copy(fs_in + sizeof(*h), arg, arglen);
    copy(fs_in + sizeof(*h) + arglen, data, datalen);
    for (u32 i = 0; i < sizeof(struct fuse_out_header); i++) fs_out[i] = 0;
    struct vq *q = &fsq[1];
    q->desc[0] = (struct vdesc){(u64)fs_in, len, D_NEXT, 1};
    q->desc[1] = (struct vdesc){(u64)fs_out, outcap, D_WRITE, 0};
    vq_submit(q, 0);
    u32 used = 0;
    if (vq_wait_used_for(q, &used, 400000000UL)) return -1000;
    struct fuse_out_header *o = (struct fuse_out_header *)fs_out;
    if (out_len) *out_len = o->len;
    if (o->unique != h->unique || used < sizeof(*o) || o->len > used) return -1001;
    return o->error;
}

static void putsigned(int v) {
    if (v < 0) { putc('-'); putdec((u64)(-(long)v)); } else putdec((u64)v);
}

static void fs_report(const char *what, int err) {
    puts("FS ");
    puts(what);
    puts(" error=");
    putsigned(err);
}

/* Reads the tag (36 bytes, NUL padded) and num_request_queues. */
static void fs_config(u64 b) {
    char tag[37];
    for (int i = 0; i < 9; i++) *(u32 *)&tag[4 * i] = vr(b, VM_CONFIG + 4 * (u64)i);
    tag[36] = 0;
    puts("FS tag=");
    for (int i = 0; tag[i]; i++) putc(tag[i] >= 32 && tag[i] < 127 ? tag[i] : '?');
    puts(" num_request_queues=");
    putdec(vr(b, VM_CONFIG + 36));
    putc('\n');
}

static int fs_init(void) {
    struct fuse_init_in in = {7, 31, 0, 0};
    int e = fuse_call(FUSE_INIT, 0, &in, sizeof(in), 0, 0, 16 + 64, 0);
    struct fuse_init_out *o = (struct fuse_init_out *)(fs_out + 16);
    fs_report("init", e);
    puts(" major=");
    putdec(e == 0 ? o->major : 0);
    putc('\n');
    return e;
}

/* Prints `n` bytes, newlines as "\n", other bytes outside ASCII as '?'. */
static void put_escaped(const u8 *p, u32 n) {
    for (u32 i = 0; i < n; i++) {
        if (p[i] == '\n') puts("\\n");
        else putc(p[i] >= 32 && p[i] < 127 ? (char)p[i] : '?');
    }
}

static void do_fs(const char *cmd) {
    u64 b = virtio_find(26, 0);
    if (!b) { puts("FS no device\n"); return; }
    fs_config(b);
    u32 vec = 0x30 + virtio_irq_of(b);
    ioapic_route(vec - 0x30, vec);
    enable_interrupts();
    if (virtio_init(b, 0, fsq, 2, 0)) { puts("FS init failed\n"); return; }
    u32 irqs_before = irq_counts[vec];
    if (fs_init()) return;
    /* The backend's call eventfd -> the VMM's relay -> interrupt status
     * bit and irqfd -> IOAPIC -> the ring-0 stub. */
    int got = wait_irq(vec, irqs_before);
    u32 isr = 0;
    for (u64 spin = 0; spin < 100000 && !(isr & 1); spin++) isr = vr(b, VM_INT_STATUS);
    vw(b, VM_INT_ACK, isr);
    puts(got == 0 ? "FS irq delivered=1 status=" : "FS irq delivered=0 status=");
    putdec(isr);
    putc('\n');

    const char *name = find_token(cmd, "file=");
    static char fname[64];
    u32 n = 0;
    while (name && name[n] && name[n] != ' ' && n < sizeof(fname) - 1) { fname[n] = name[n]; n++; }
    fname[n] = 0;
    int e = fuse_call(FUSE_LOOKUP, FUSE_ROOT, fname, n + 1, 0, 0, 16 + sizeof(struct fuse_entry_out), 0);
    struct fuse_entry_out *ent = (struct fuse_entry_out *)(fs_out + 16);
    u64 node = e == 0 ? ent->nodeid : 0;
    fs_report("lookup", e);
    puts(" size=");
    putdec(e == 0 ? ent->attr.size : 0);
    puts(" regular=");
    putdec(e == 0 && (ent->attr.mode & 0170000) == 0100000);
    putc('\n');
    if (e) return;

    struct fuse_getattr_in ga = {0, 0, 0};
    e = fuse_call(FUSE_GETATTR, node, &ga, sizeof(ga), 0, 0, 16 + sizeof(struct fuse_attr_out), 0);
    struct fuse_attr_out *ao = (struct fuse_attr_out *)(fs_out + 16);
    fs_report("getattr", e);
    puts(" size=");
    putdec(e == 0 ? ao->attr.size : 0);
    putc('\n');

    struct fuse_open_in oi = {0 /* O_RDONLY */, 0};
    e = fuse_call(FUSE_OPEN, node, &oi, sizeof(oi), 0, 0, 16 + sizeof(struct fuse_open_out), 0);
    u64 fh = ((struct fuse_open_out *)(fs_out + 16))->fh;
    fs_report("open", e);
    putc('\n');
    if (e) return;

    struct fuse_rw_in ri = {fh, 0, 4096, 0, 0, 0, 0};
    u32 olen = 0;
    e = fuse_call(FUSE_READ, node, &ri, sizeof(ri), 0, 0, 16 + 4096, &olen);
    u32 got_bytes = e == 0 && olen >= 16 ? olen - 16 : 0;
    fs_report("read", e);
    puts(" n=");
    putdec(got_bytes);
    puts(" data=");
    put_escaped(fs_out + 16, got_bytes);
    putc('\n');

    struct fuse_flush_in fl = {fh, 0, 0, 0};
    e = fuse_call(FUSE_FLUSH, node, &fl, sizeof(fl), 0, 0, 16, 0);
    fs_report("flush", e);
    struct fuse_release_in rl = {fh, 0, 0, 0};
    e = fuse_call(FUSE_RELEASE, node, &rl, sizeof(rl), 0, 0, 16, 0);
    puts(" release=");
    putsigned(e);
    putc('\n');

    const char *newname = "written-by-guest.txt";
    struct fuse_create_in ci = {0x1 | 0x40 | 0x200 /* O_WRONLY|O_CREAT|O_TRUNC */, 0100644, 0, 0};
    e = fuse_call(FUSE_CREATE, FUSE_ROOT, &ci, sizeof(ci), newname, slen(newname) + 1,
                  16 + sizeof(struct fuse_entry_out) + sizeof(struct fuse_open_out), 0);
    struct fuse_entry_out *ce = (struct fuse_entry_out *)(fs_out + 16);
    struct fuse_open_out *co = (struct fuse_open_out *)(fs_out + 16 + sizeof(*ce));
    u64 nnode = e == 0 ? ce->nodeid : 0, nfh = e == 0 ? co->fh : 0;
    fs_report("create", e);
    putc('\n');
    if (e) return;

    const char *text = "AMPOULE guest wrote this through FUSE_WRITE on virtio-fs\n";
    struct fuse_rw_in wi = {nfh, 0, slen(text), 0, 0, 0, 0};
    e = fuse_call(FUSE_WRITE, nnode, &wi, sizeof(wi), text, slen(text), 16 + sizeof(struct fuse_write_out), 0);
    fs_report("write", e);
    puts(" size=");
    putdec(e == 0 ? ((struct fuse_write_out *)(fs_out + 16))->size : 0);
    putc('\n');
    struct fuse_flush_in fl2 = {nfh, 0, 0, 0};
    e = fuse_call(FUSE_FLUSH, nnode, &fl2, sizeof(fl2), 0, 0, 16, 0);
    fs_report("flush", e);
    struct fuse_release_in rl2 = {nfh, 0x1, 0, 0};
    e = fuse_call(FUSE_RELEASE, nnode, &rl2, sizeof(rl2), 0, 0, 16, 0);
    puts(" release=");
    putsigned(e);
    putc('\n');
    /* A driver reset stops the backend's rings; set up again, the device
     * serves the same FUSE session. */
    qmem_next = 0;
    if (virtio_init(b, 0, fsq, 2, 0)) { puts("FS reinit failed\n"); return; }
    e = fuse_call(FUSE_GETATTR, FUSE_ROOT, &ga, sizeof(ga), 0, 0, 16 + sizeof(struct fuse_attr_out), 0);
    fs_report("after-reset getattr", e);
    puts(" dir=");
    putdec(e == 0 && (ao->attr.mode & 0170000) == 0040000);
    putc('\n');
    puts("FS-DONE\n");
}

/* Polls the device status for DEVICE_NEEDS_RESET (the backend hung up). */
static u32 fs_wait_needs_reset(u64 b) {
    u32 st = 0;
    for (u64 i = 0; i < 200000; i++) {
        st = vr(b, VM_STATUS);
        if (st & 0x40) break;
        for (int k = 0; k < 100; k++) pause();
    }
    return st;
}

/* ---- hostile virtio-fs guest: bad rings, then bad descriptors ---- */
static void do_wait(void);
static void do_fsbad(void) {
    u64 b = virtio_find(26, 0);
    if (!b) { puts("FSBAD no device\n"); return; }
    /* A request queue whose descriptor table lies outside guest memory. */
    vw(b, VM_STATUS, 0);
    vw(b, VM_STATUS, 1);
    vw(b, VM_STATUS, 3);
    vw(b, VM_DRV_FEAT_SEL, 1);
    vw(b, VM_DRV_FEAT, 1);
    vw(b, VM_DRV_FEAT_SEL, 0);
    vw(b, VM_DRV_FEAT, 0);
    vw(b, VM_STATUS, 3 | 8);
    vw(b, VM_QSEL, 1);
    vw(b, VM_QNUM, 256);
    vw(b, VM_QDESC, 0xfffff000);
    vw(b, VM_QDESC + 4, 0xffff);
    vw(b, VM_QDRIVER, (u32)(u64)qmem[0][1]);
    vw(b, VM_QDRIVER + 4, 0);
    vw(b, VM_QDEVICE, (u32)(u64)qmem[0][2]);
    vw(b, VM_QDEVICE + 4, 0);
    vw(b, VM_QREADY, 1);
    vw(b, VM_STATUS, 3 | 8 | 4);
    puts("FSBAD bad-rings status=");
    puthex(vr(b, VM_STATUS));
    putc('\n');
    /* A proper setup: the device still works. */
    qmem_next = 0;
    if (virtio_init(b, 0, fsq, 2, 0)) { puts("FSBAD reinit failed\n"); return; }
    struct fuse_init_in in = {7, 31, 0, 0};
    int e = fuse_call(FUSE_INIT, 0, &in, sizeof(in), 0, 0, 16 + 64, 0);
    puts("FSBAD init error=");
    putsigned(e);
    putc('\n');
    /* Bad descriptors on both queues: outside guest memory, a huge
     * length, a chain that loops on itself. The backend may give up. */
    struct vq *q = &fsq[1];
    q->desc[0] = (struct vdesc){0x7fff00000000UL, 64, D_NEXT, 1};
    q->desc[1] = (struct vdesc){(u64)fs_out, 4096, D_WRITE, 0};
    q->desc[2] = (struct vdesc){(u64)fs_in, 0xffffffffu, D_NEXT, 1};
    q->desc[3] = (struct vdesc){(u64)fs_in, 64, D_NEXT, 3};
    vq_submit(q, 0);
    vq_submit(q, 2);
    vq_submit(q, 3);
    struct vq *hq = &fsq[0];
    hq->desc[0] = (struct vdesc){0xfffffffff000UL, 0xffffffffu, D_NEXT | D_WRITE, 0};
    vq_submit(hq, 0);
    u32 answered = 0;
    for (int i = 0; i < 3; i++)
        if (vq_wait_used_for(q, 0, 20000000UL) == 0) answered++;
    puts("FSBAD posted=4 answered=");
    putdec(answered);
    putc('\n');
    u32 st = fs_wait_needs_reset(b);
    puts("FSBAD after status=");
    puthex(st);
    putc('\n');
    /* Setting the device up again: refused if the backend is gone. */
    qmem_next = 0;
    int r = virtio_init(b, 0, fsq, 2, 0);
    puts("FSBAD again init=");
    putsigned(r);
    puts(" status=");
    puthex(vr(b, VM_STATUS));
    putc('\n');
    puts("FSBAD-DONE\n");
    do_wait();
}

/* ---- virtio-net (ARP and ICMP echo with the host's tap) ---- */
#define NET_HDR 12
#define NET_RXN 16
#define NET_BUF 2048
#define NET_BIG 0x200000UL
static u8 net_rx[NET_RXN][NET_BUF] __attribute__((aligned(64)));
static u8 net_txh[NET_HDR] __attribute__((aligned(64)));
static u8 net_txf[128] __attribute__((aligned(64)));
static u8 net_frame[NET_BUF];
static u32 net_frame_len;
static struct vq netq[2];
static u64 net_base;
static u8 net_mac[6], peer_mac[6];
static const u8 my_ip[4] = {10, 77, 0, 2};
static const u8 peer_ip[4] = {10, 77, 0, 1};
static const u8 bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

static int eq(const u8 *a, const u8 *b, u32 n) {
    for (u32 i = 0; i < n; i++) if (a[i] != b[i]) return 0;
    return 1;
}
static void put_mac(const u8 *m) {
    for (int i = 0; i < 6; i++) {
        if (i) putc(':');
        putc("0123456789abcdef"[m[i] >> 4]);
        putc("0123456789abcdef"[m[i] & 15]);
    }
}
static u16 be16(const u8 *p) { return (u16)((p[0] << 8) | p[1]); }
static void put_be16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static u16 inet_csum(const u8 *p, u32 n) {
    u32 s = 0;
    for (u32 i = 0; i + 1 < n; i += 2) s += be16(p + i);
    if (n & 1) s += (u32)p[n - 1] << 8;
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (u16)~s;
}

static void net_post_rx(u16 i) {
    struct vq *q = &netq[0];
    q->desc[i] = (struct vdesc){(u64)net_rx[i], NET_BUF, D_WRITE, 0};
    q->avail->ring[q->avail->idx % q->size] = i;
    barrier();
    q->avail->idx++;
}

/* Finds the NIC, negotiates MAC and STATUS, reads the config space and
 * sets the queues up; posts the RX buffers when `post`. */
static int net_init(const char *tag, int post) {
    net_base = virtio_find(1, 0);
    if (!net_base) { puts(tag); puts(" no device\n"); return -1; }
    u32 feat = 0;
    if (virtio_init(net_base, (1u << 5) | (1u << 16), netq, 2, &feat)) {
        puts(tag);
        puts(" init failed\n");
        return -1;
    }
    u32 lo = vr(net_base, VM_CONFIG), hi = vr(net_base, VM_CONFIG + 4);
    for (int i = 0; i < 4; i++) net_mac[i] = (u8)(lo >> (8 * i));
    net_mac[4] = (u8)hi;
    net_mac[5] = (u8)(hi >> 8);
    puts(tag);
    puts(" mac=");
    put_mac(net_mac);
    puts(" status=");
    putdec(hi >> 16);
    puts(" features-mac=");
    putdec((feat >> 5) & 1);
    puts(" features-status=");
    putdec((feat >> 16) & 1);
    putc('\n');
    if (post) {
        for (u16 i = 0; i < NET_RXN; i++) net_post_rx(i);
        vw(net_base, VM_QNOTIFY, 0);
    }
    return 0;
}

/* Sends `len` bytes of net_txf behind a zero header, in two descriptors. */
static int net_send(u32 len) {
    struct vq *q = &netq[1];
    for (int i = 0; i < NET_HDR; i++) net_txh[i] = 0;
    q->desc[0] = (struct vdesc){(u64)net_txh, NET_HDR, D_NEXT, 1};
    q->desc[1] = (struct vdesc){(u64)net_txf, len, 0, 0};
    vq_submit(q, 0);
    return vq_wait_used(q, 0);
}

static u32 build_arp(u16 op, const u8 *eth_dst, const u8 *tha, const u8 *tpa) {
    u8 *f = net_txf;
    for (int i = 0; i < 6; i++) { f[i] = eth_dst[i]; f[6 + i] = net_mac[i]; }
    put_be16(f + 12, 0x0806);
    put_be16(f + 14, 1);
    put_be16(f + 16, 0x0800);
    f[18] = 6;
    f[19] = 4;
    put_be16(f + 20, op);
    for (int i = 0; i < 6; i++) { f[22 + i] = net_mac[i]; f[32 + i] = tha[i]; }
    for (int i = 0; i < 4; i++) { f[28 + i] = my_ip[i]; f[38 + i] = tpa[i]; }
    return 42;
}

static u32 net_rx_seen, net_rx_badhdr;

/* Waits for the next frame into net_frame (reposting its buffer); ARP
 * requests for our address are answered on the way. 0, or -1 on timeout. */
static int net_recv(u64 spins) {
    struct vq *q = &netq[0];
    for (u64 spin = 0; spin < spins; spin++) {
        if (!vq_has_used(q)) { pause(); continue; }
        struct vused_elem *e = &q->used->ring[q->last_used % q->size];
        u16 id = (u16)e->id;
        u32 len = e->len;
        q->last_used++;
        if (id >= NET_RXN) continue;
        const u8 *b = net_rx[id];
        int ok = len >= NET_HDR + 14 && len <= NET_BUF;
        /* No flags and no GSO; num_buffers 1. */
        if (ok && (b[0] || b[1] || b[10] != 1 || b[11])) net_rx_badhdr++;
        net_frame_len = ok ? len - NET_HDR : 0;
        for (u32 i = 0; i < net_frame_len; i++) net_frame[i] = b[NET_HDR + i];
        net_post_rx(id);
        vw(net_base, VM_QNOTIFY, 0);
        if (!ok) continue;
        net_rx_seen++;
        const u8 *f = net_frame;
        if (be16(f + 12) == 0x0806 && be16(f + 20) == 1 && eq(f + 38, my_ip, 4)) {
            build_arp(2, f + 6, f + 22, f + 28);
            net_send(42);
            continue;
        }
        return 0;
    }
    return -1;
}

/* ARP request for peer_ip; waits for the reply and reports its sender. */
static int net_arp(const char *tag) {
    static const u8 zero[6];
    build_arp(1, bcast, zero, peer_ip);
    if (net_send(42)) { puts(tag); puts(" arp tx timeout\n"); return -1; }
    for (int tries = 0; tries < 4096; tries++) {
        if (net_recv(400000000UL)) break;
        const u8 *f = net_frame;
        if (net_frame_len >= 42 && be16(f + 12) == 0x0806 && be16(f + 20) == 2 &&
            eq(f + 28, peer_ip, 4) && eq(f + 38, my_ip, 4) && eq(f, net_mac, 6)) {
            for (int i = 0; i < 6; i++) peer_mac[i] = f[22 + i];
            puts(tag);
            puts(" arp-reply from=");
            put_mac(peer_mac);
            puts(" ip=10.77.0.1 eth-src-matches=");
            putdec(eq(f + 6, peer_mac, 6));
            puts(" skipped=");
            putdec(tries);
            putc('\n');
            return 0;
        }
    }
    puts(tag);
    puts(" arp-reply missing\n");
    return -1;
}

/* ICMP echo request to peer_ip; waits for the reply. */
static void net_ping(void) {
    static const char payload[] = "ampoule-icmp-payload";
    u32 plen = sizeof(payload) - 1;
    u8 *f = net_txf;
    for (int i = 0; i < 6; i++) { f[i] = peer_mac[i]; f[6 + i] = net_mac[i]; }
    put_be16(f + 12, 0x0800);
    u8 *ip = f + 14;
    u16 total = (u16)(20 + 8 + plen);
    ip[0] = 0x45; ip[1] = 0;
    put_be16(ip + 2, total);
    put_be16(ip + 4, 0x1234);
    put_be16(ip + 6, 0x4000);
    ip[8] = 64; ip[9] = 1;
    put_be16(ip + 10, 0);
    for (int i = 0; i < 4; i++) { ip[12 + i] = my_ip[i]; ip[16 + i] = peer_ip[i]; }
    put_be16(ip + 10, inet_csum(ip, 20));
    u8 *ic = ip + 20;
    ic[0] = 8; ic[1] = 0;
    put_be16(ic + 2, 0);
    put_be16(ic + 4, 0xa3b1);
    put_be16(ic + 6, 1);
    for (u32 i = 0; i < plen; i++) ic[8 + i] = (u8)payload[i];
    put_be16(ic + 2, inet_csum(ic, 8 + plen));
    if (net_send(14 + total)) { puts("NET icmp tx timeout\n"); return; }
    for (int tries = 0; tries < 4096; tries++) {
        if (net_recv(400000000UL)) break;
        const u8 *r = net_frame;
        const u8 *rip = r + 14, *ric = r + 34;
        if (net_frame_len >= 14u + total && be16(r + 12) == 0x0800 && rip[9] == 1 &&
            eq(rip + 12, peer_ip, 4) && ric[0] == 0 && be16(ric + 4) == 0xa3b1) {
            puts("NET icmp-reply from=10.77.0.1 seq=");
            putdec(be16(ric + 6));
            puts(" ip-csum-ok=");
            putdec(inet_csum(rip, 20) == 0);
            puts(" icmp-csum-ok=");
            putdec(inet_csum(ric, 8 + plen) == 0);
            puts(" payload-ok=");
            putdec(eq(ric + 8, (const u8 *)payload, plen));
            putc('\n');
            return;
        }
    }
    puts("NET icmp-reply missing\n");
}

static void do_net(void) {
    if (net_init("NET", 1)) return;
    if (net_arp("NET") == 0) net_ping();
    puts("NET rx-frames=");
    putdec(net_rx_seen);
    puts(" bad-headers=");
    putdec(net_rx_badhdr);
    putc('\n');
    puts("NET-DONE\n");
    do_wait();
}

/* Waits for Ctrl-Alt-Del on the i8042 (a `shutdown` on the control
 * socket), used here as the host's "go on". */
static void wait_ctrl_alt_del(void) {
    u8 prev = 0;
    for (;;) {
        if (inb(0x64) & 1) {
            u8 b = inb(0x60);
            if (prev == 0xe0 && b == 0x71) return;
            prev = b;
        } else {
            pause();
        }
    }
}

/* ---- hostile virtio-net guest ---- */
static void do_netbad(void) {
    if (net_init("NETBAD", 0)) return;
    struct vq *t = &netq[1];
    for (int i = 0; i < NET_HDR; i++) net_txh[i] = 0;
    u32 answered = 0;
    /* Oversized: 12 + 40000 + 40000 bytes; then a huge length. */
    t->desc[0] = (struct vdesc){(u64)net_txh, NET_HDR, D_NEXT, 1};
    t->desc[1] = (struct vdesc){NET_BIG, 40000, D_NEXT, 2};
    t->desc[2] = (struct vdesc){NET_BIG, 40000, 0, 0};
    t->desc[3] = (struct vdesc){(u64)net_txf, 0xffffffffu, 0, 0};
    /* A chain looping on itself. */
    t->desc[4] = (struct vdesc){(u64)net_txf, 64, D_NEXT, 4};
    /* A descriptor outside guest memory. */
    t->desc[5] = (struct vdesc){(u64)net_txh, NET_HDR, D_NEXT, 6};
    t->desc[6] = (struct vdesc){0x7fff00000000UL, 64, 0, 0};
    /* Device-writable, too short, next index out of range. */
    t->desc[7] = (struct vdesc){(u64)net_txf, 64, D_WRITE, 0};
    t->desc[8] = (struct vdesc){(u64)net_txh, NET_HDR, D_NEXT, 9};
    t->desc[9] = (struct vdesc){(u64)net_txf, 4, 0, 0};
    t->desc[10] = (struct vdesc){(u64)net_txh, NET_HDR, D_NEXT, 60000};
    static const u16 heads[] = {0, 3, 4, 5, 7, 8, 10};
    for (u32 i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
        vq_submit(t, heads[i]);
        if (vq_wait_used(t, 0) == 0) answered++;
    }
    /* A head index out of range (no used entry can name it), then a
     * header asking for GSO, which was not offered. */
    t->avail->ring[t->avail->idx % t->size] = 50000;
    barrier();
    t->avail->idx++;
    static u8 gso_hdr[NET_HDR] __attribute__((aligned(16)));
    gso_hdr[1] = 1;
    t->desc[11] = (struct vdesc){(u64)gso_hdr, NET_HDR, D_NEXT, 12};
    t->desc[12] = (struct vdesc){(u64)net_txf, 60, 0, 0};
    vq_submit(t, 11);
    if (vq_wait_used(t, 0) == 0) answered++;
    puts("NETBAD tx-bad posted=9 answered=");
    putdec(answered);
    putc('\n');

    /* RX: a read-only buffer and one outside memory come back at once,
     * empty; 4-byte buffers take a frame each and come back empty. */
    struct vq *r = &netq[0];
    for (int i = 0; i < NET_RXN; i++)
        for (int k = 0; k < 8; k++) net_rx[i][k] = 0xee;
    r->desc[0] = (struct vdesc){(u64)net_rx[0], NET_BUF, 0, 0};
    r->desc[1] = (struct vdesc){0x7fff00000000UL, NET_BUF, D_WRITE, 0};
    for (u16 i = 0; i < 10; i++) {
        if (i >= 2) r->desc[i] = (struct vdesc){(u64)net_rx[i], 4, D_WRITE, 0};
        r->avail->ring[r->avail->idx % r->size] = i;
        barrier();
        r->avail->idx++;
    }
    vw(net_base, VM_QNOTIFY, 0);
    u32 n = 0, len0 = 0, len = 0;
    for (; n < 2; n++) {
        if (vq_wait_used(r, &len)) break;
        if (len == 0) len0++;
    }
    puts("NETBAD rx-bad returned=");
    putdec(n);
    puts(" len0=");
    putdec(len0);
    putc('\n');
    puts("NETBAD RX-SMALL-POSTED\n");
    n = 0;
    len0 = 0;
    for (; n < 8; n++) {
        if (vq_wait_used_for(r, &len, 4000000000UL)) break;
        if (len == 0) len0++;
    }
    u32 untouched = 1;
    for (int i = 2; i < 10; i++)
        for (int k = 0; k < 8; k++)
            if (net_rx[i][k] != 0xee) untouched = 0;
    puts("NETBAD rx-small returned=");
    putdec(n);
    puts(" len0=");
    putdec(len0);
    puts(" untouched=");
    putdec(untouched);
    putc('\n');
    puts("NETBAD PAUSED\n");
    wait_ctrl_alt_del();
    puts("NETBAD RESUMED\n");
    /* Proper buffers again: the frames left in the tap, then an ARP
     * exchange. */
    for (u16 i = 0; i < NET_RXN; i++) net_post_rx(i);
    vw(net_base, VM_QNOTIFY, 0);
    if (net_arp("NETBAD after") == 0) puts("NETBAD-DONE\n");
}

static void do_serialflood(const char *cmd) {
    const char *v = find_token(cmd, "bytes=");
    u64 want = v ? parse_dec(v) : 200000;
    u64 done = 0;
    for (u64 i = 0; done < want; i++) {
        puts("SERIAL-FLOOD ");
        putdec(i);
        puts(" abcdefghijklmnopqrstuvwxyz0123456789\n");
        done += 14 + 37;
        for (u64 d = i; d >= 10; d /= 10) done++;
    }
    puts("SERIAL-FLOOD-END\n");
}

static void do_blkid(void) {
    struct vq q;
    u64 b = virtio_find(2, 0);
    if (!b || virtio_init(b, 0, &q, 1, 0)) { puts("BLKID init failed\n"); return; }
    for (int i = 0; i < 21; i++) blkbuf[i] = 0;
    int st = blk_io(&q, 8, 0, blkbuf, 20);
    puts("BLKID status=");
    putdec((u64)st);
    puts(" id=");
    for (int i = 0; i < 20 && blkbuf[i]; i++)
        putc(blkbuf[i] >= 32 && blkbuf[i] < 127 ? (char)blkbuf[i] : '?');
    putc('\n');
}

static void do_wait(void) {
    puts("WAITING\n");
    u8 prev = 0;
    for (;;) {
        if (inb(0x64) & 1) {
            u8 b = inb(0x60);
            if (prev == 0xe0 && b == 0x71) break;
            prev = b;
        } else {
            pause();
        }
    }
    puts("CTRL-ALT-DEL\n");
}

void guest_main(long proto, u64 info) {
    struct bootinfo bi;
    read_bootinfo(proto, info, &bi);
    const char *mode = find_token(bi.cmdline, "t=");
    find_virtio(bi.cmdline);
    puts("AMPOULE-GUEST proto=");
    puts(proto == 0 ? "linux64" : "pvh");
    putc('\n');
    if (mode_is(mode, "hello")) {
        puts("hello from the test guest\n");
    } else if (mode_is(mode, "bootparams")) {
        do_bootparams(&bi);
    } else if (mode_is(mode, "smp")) {
        do_smp();
    } else if (mode_is(mode, "cpuid")) {
        do_cpuid();
    } else if (mode_is(mode, "vsock")) {
        do_vsock(bi.cmdline);
    } else if (mode_is(mode, "irq")) {
        do_irq();
    } else if (mode_is(mode, "hostile")) {
        do_hostile(bi.cmdline);
    } else if (mode_is(mode, "serialflood")) {
        do_serialflood(bi.cmdline);
    } else if (mode_is(mode, "blkid")) {
        do_blkid();
    } else if (mode_is(mode, "netbad")) {
        do_netbad();
    } else if (mode_is(mode, "net")) {
        do_net();
    } else if (mode_is(mode, "fsbad")) {
        do_fsbad();
    } else if (mode_is(mode, "fs")) {
        do_fs(bi.cmdline);
    } else if (mode_is(mode, "blk")) {
        do_blk();
    } else if (mode_is(mode, "wait")) {
        do_wait();
    } else if (mode_is(mode, "hang")) {
        puts("HANGING\n");
        for (;;) pause();
    } else if (mode_is(mode, "exitport")) {
        puts("EXITPORT\n");
        outb(0xf4, 0);
        for (;;) pause();
    } else if (mode_is(mode, "fault")) {
        puts("FAULT\n");
        __asm__ volatile("hlt"); /* #GP in ring 3, no handler: triple fault */
    } else {
        puts("unknown mode\n");
    }
    puts("DONE\n");
    reset();
}
