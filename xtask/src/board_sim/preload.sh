#!/bin/sh
# Written by `cargo xtask board-sim --preload`: imports the container images
# baked into this disk into Podman, once each. A marker beside each tarball
# records the import, so later boots start no Podman process here (each
# costs seconds under emulation).
set -eu
cd /var/lib/iot-preload
while read -r name file how; do
  [ -n "$name" ] || continue
  if [ -e "$file.done" ]; then
    echo "iot-preload: $name present"
    continue
  fi
  if [ "$how" = load ]; then
    podman load -i "$file"
  else
    podman import "$file" "$name"
  fi
  : > "$file.done"
  echo "iot-preload: ${how}ed $name"
done < images.list
