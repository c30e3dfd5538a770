#include "cfloorepoll.h"
