// Nothing to compile: the target exists for its header (see include/).
#include "CSpoolshipFuzzDriver.h"
