# shellcheck shell=sh
# /etc/profile.d/nexus.sh: the programs, man pages and desktop entries of
# the Nexus Index, for login shells (installed by the nexus package).
#
# The Index is the tree `nexus mount` serves beside /Programs: bin, lib,
# share... merged from every App's Current version. Its directory is the
# configuration's `mount { index "..." }` (/etc/nexus/nexus.kdl, read with
# `nexus config get mount.index`), else /System/Index. Nothing changes
# unless the Index is there (mounted), so a machine without it gets no
# dangling entries. The Index comes after the system's own directories: a
# grafted program or man page never shadows the host's.

nexus_index=
if command -v nexus >/dev/null 2>&1; then
    nexus_index=$(nexus config get mount.index 2>/dev/null) || nexus_index=
fi
: "${nexus_index:=/System/Index}"

if [ -d "$nexus_index/bin" ]; then
    case ":$PATH:" in
        *":$nexus_index/bin:"*) ;;
        *) PATH="${PATH:+$PATH:}$nexus_index/bin" && export PATH ;;
    esac
fi
if [ -d "$nexus_index/share/man" ]; then
    case ":${MANPATH-}:" in
        *":$nexus_index/share/man:"*) ;;
        # Unset, MANPATH becomes ":DIR": the leading colon keeps man's own
        # search path, first (manpath(1)).
        *) MANPATH="${MANPATH-}:$nexus_index/share/man" && export MANPATH ;;
    esac
fi
if [ -d "$nexus_index/share" ]; then
    case ":${XDG_DATA_DIRS-}:" in
        *":$nexus_index/share:"*) ;;
        # Unset means /usr/local/share:/usr/share (XDG base directory spec).
        *) XDG_DATA_DIRS="${XDG_DATA_DIRS:-/usr/local/share:/usr/share}:$nexus_index/share" &&
            export XDG_DATA_DIRS ;;
    esac
fi
unset nexus_index
