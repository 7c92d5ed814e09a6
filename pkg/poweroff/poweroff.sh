#!/bin/sh
# Powers the machine off after $1 seconds (default 30). See build.yml.
sleep "${1:-30}"
echo "poweroff: powering off"
poweroff
