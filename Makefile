# Builds the BPF CO-RE objects that ship inside the bpfscope package.
#   make bpf          rebuild src/bpfscope/objects/<arch>/*.bpf.o for every arch
#                     in ARCHS (x86_64 and aarch64), or one: make bpf ARCH=aarch64
#   make check-bpf    fail if the committed objects of any arch differ from a
#                     fresh build
#   make vmlinux      regenerate bpf/vmlinux/<arch>/vmlinux.h from a kernel's BTF
#                     (this kernel's by default; VMLINUX_BTF=file for another:
#                     scripts/vmlinuz_btf.py extracts it from a vmlinuz)
#   make matrix       boot other kernels in qemu and run the kernel tests there
#                     (root; docs/kernel-matrix.md), e.g.
#                     make matrix MATRIX_ARGS="-k all --tests all"
# Every object is built for each architecture the package ships; the BPF
# bytecode is the same ISA, but vmlinux.h (pt_regs, syscall wrappers) and
# __TARGET_ARCH_* differ, so each gets its own objects.
ARCHS := x86_64 aarch64
ARCH ?= $(shell uname -m)
CLANG ?= clang
LLVM_STRIP ?= llvm-strip
BPFTOOL ?= bpftool
VMLINUX_BTF ?= /sys/kernel/btf/vmlinux

BPF_DIR := src/bpfscope/bpf
VMLINUX_DIR := $(BPF_DIR)/vmlinux/$(ARCH)
OBJ_DIR ?= src/bpfscope/objects/$(ARCH)
SRCS := $(wildcard $(BPF_DIR)/*.bpf.c)
OBJS := $(patsubst $(BPF_DIR)/%.bpf.c,$(OBJ_DIR)/%.bpf.o,$(SRCS))
# compat.h: types an older arch vmlinux.h lacks (force-included where it exists)
VMLINUX_COMPAT := $(wildcard $(VMLINUX_DIR)/compat.h)
HDRS := $(wildcard $(BPF_DIR)/*.h) $(VMLINUX_DIR)/vmlinux.h $(VMLINUX_COMPAT)

TARGET_ARCH_x86_64 := x86
TARGET_ARCH_aarch64 := arm64
BPF_TARGET_ARCH := $(TARGET_ARCH_$(ARCH))

# -ffile-prefix-map keeps build paths out of the object so that a rebuild in
# any checkout is byte-identical (the stale-object check depends on it).
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_$(BPF_TARGET_ARCH) \
	-I$(VMLINUX_DIR) -I$(BPF_DIR) $(if $(VMLINUX_COMPAT),-include $(VMLINUX_COMPAT)) \
	-ffile-prefix-map=$(CURDIR)=. \
	-Wall -Werror -Wno-unused-function

MATRIX_ARGS ?=

.PHONY: bpf bpf-arch check-bpf check-bpf-arch vmlinux clean-bpf matrix
# Without ARCH= on the command line: every arch, each in its own make.
ifeq ($(origin ARCH),command line)
bpf: bpf-arch
check-bpf: check-bpf-arch
else
bpf:
	@for a in $(ARCHS); do $(MAKE) --no-print-directory bpf ARCH=$$a || exit 1; done
check-bpf:
	@status=0; for a in $(ARCHS); do $(MAKE) --no-print-directory -s check-bpf ARCH=$$a || status=1; done; exit $$status
endif

bpf-arch: $(OBJS)

$(OBJ_DIR)/%.bpf.o: $(BPF_DIR)/%.bpf.c $(HDRS)
	@test -n "$(BPF_TARGET_ARCH)" || { echo "unsupported ARCH=$(ARCH)"; exit 1; }
	@mkdir -p $(OBJ_DIR)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@.tmp
	$(LLVM_STRIP) -g $@.tmp
	mv $@.tmp $@

check-bpf-arch:
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	$(MAKE) --no-print-directory -s bpf ARCH=$(ARCH) OBJ_DIR=$$tmp >/dev/null && \
	status=0 && \
	for f in $$tmp/*.bpf.o; do \
		committed=$(OBJ_DIR)/$$(basename $$f); \
		if ! cmp -s $$f $$committed; then echo "stale BPF object: $$committed (run 'make bpf')"; status=1; fi; \
	done && \
	for f in $(OBJ_DIR)/*.bpf.o; do \
		test -e $$tmp/$$(basename $$f) || { echo "orphan BPF object: $$f (its source is gone)"; status=1; }; \
	done && \
	if [ $$status -eq 0 ]; then echo "BPF objects up to date ($(ARCH))"; fi && exit $$status

vmlinux:
	@mkdir -p $(VMLINUX_DIR)
	$(BPFTOOL) btf dump file $(VMLINUX_BTF) format c > $(VMLINUX_DIR)/vmlinux.h

matrix:
	matrix/run $(MATRIX_ARGS)

ifeq ($(origin ARCH),command line)
clean-bpf:
	rm -f $(OBJ_DIR)/*.bpf.o
else
clean-bpf:
	rm -f $(foreach a,$(ARCHS),src/bpfscope/objects/$(a)/*.bpf.o)
endif
