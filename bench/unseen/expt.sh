#!/bin/bash
# usage: expt.sh NAME SET "THETA OPTS" CLS_RUN [EXTS]: step 2 alone (exp_step.sh theta)
exec "$(dirname "$0")/exp_step.sh" theta "$@"
