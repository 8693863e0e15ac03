/* Compiled with -std=c11 -pedantic -Werror: the public header must stand alone. */
#include "dipole/dipole.h"

int main(void)
{
    return DIPOLE_SUCCESS;
}
